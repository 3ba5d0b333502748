#ifndef LIDB_CLEANUP_H
#define LIDB_CLEANUP_H

#include <stddef.h>

/// Process-wide tables that signal handlers read: temporary files to remove when the process is
/// interrupted, and mapped input files (to name the file when reading its mapping faults).
/// The tables are preallocated so the handlers only read fixed memory and call unlink/write/_exit,
/// which are async-signal-safe.

/// Remembers a temporary file to remove if SIGINT, SIGTERM or SIGHUP ends the process. Returns a
/// slot for `lidb_cleanup_forget_file`, or -1 when the table is full or the path is too long (the
/// file is then not removed on a signal; nothing else changes).
int lidb_cleanup_remember_file(const char *path);
/// Forgets a slot returned by `lidb_cleanup_remember_file` (call after renaming or removing the file).
void lidb_cleanup_forget_file(int slot);
/// Removes every remembered file now (what the handlers do). Returns how many were remembered.
int lidb_cleanup_remove_files(void);

/// Remembers a temporary folder (e.g. an export assembled before it is renamed into place) to
/// remove, with everything in it, if SIGINT, SIGTERM or SIGHUP ends the process (or a SIGBUS the
/// handlers catch). Symbolic links inside are removed, never followed; trees deeper than 8 levels
/// are not followed. Returns a slot for `lidb_cleanup_forget_folder`, or -1 when the table is full
/// or the path is too long.
int lidb_cleanup_remember_folder(const char *path);
/// Forgets a slot returned by `lidb_cleanup_remember_folder` (after renaming or removing the folder).
void lidb_cleanup_forget_folder(int slot);
/// Removes every remembered folder and its contents now (what the handlers do, after the files).
/// Returns how many were remembered.
int lidb_cleanup_remove_folders(void);

/// Remembers a read-only mapping of `path` at [base, base + length). Returns a slot or -1.
int lidb_cleanup_remember_mapping(const void *base, size_t length, const char *path);
void lidb_cleanup_forget_mapping(int slot);

/// Installs the handlers (idempotent):
/// - SIGINT, SIGTERM, SIGHUP (each unless it is ignored, e.g. under nohup): remove the remembered
///   temporary files and folders, then end the process by the same signal with its default action (the three
///   are unblocked in the calling thread, which threads created afterwards inherit);
/// - SIGBUS: when the faulting address lies in a remembered mapping (the file shrank while mapped),
///   print `<prefix><path>: <message>` on stderr, remove the temporary files and folders and exit with
///   `exit_code`; any other SIGBUS removes the temporary files and takes the default action.
/// `prefix` and `message` are copied.
void lidb_cleanup_install_handlers(const char *prefix, const char *message, int exit_code);

#endif
