#define _GNU_SOURCE
#include "lidb_cleanup.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

// Everything a handler touches is static storage written before the slot is published (release
// store) and read after the state is seen (acquire load); handlers only call unlink, write,
// sigaction, raise and _exit, which are async-signal-safe, and — to remove a temporary folder —
// openat, the getdents64 system call, unlinkat, lseek and close (system calls, no allocation).

#define MAX_FILES 64
#define MAX_FOLDERS 16
#define MAX_MAPPINGS 256
#define PATH_BYTES 4096
// How deep a temporary folder tree is followed (an export's is two levels deep).
#define MAX_FOLDER_DEPTH 8

enum { SLOT_FREE = 0, SLOT_FILLING = 1, SLOT_LIVE = 2 };

static char file_paths[MAX_FILES][PATH_BYTES];
static _Atomic int file_state[MAX_FILES];

static char folder_paths[MAX_FOLDERS][PATH_BYTES];
static _Atomic int folder_state[MAX_FOLDERS];

static struct {
    uintptr_t base;
    size_t length;
    char path[PATH_BYTES];
} mappings[MAX_MAPPINGS];
static _Atomic int mapping_state[MAX_MAPPINGS];

static int claim(_Atomic int *states, int count) {
    for (int i = 0; i < count; i++) {
        int expected = SLOT_FREE;
        if (atomic_compare_exchange_strong(&states[i], &expected, SLOT_FILLING)) return i;
    }
    return -1;
}

int lidb_cleanup_remember_file(const char *path) {
    size_t n = strlen(path);
    if (n == 0 || n >= PATH_BYTES) return -1;
    int i = claim(file_state, MAX_FILES);
    if (i < 0) return -1;
    memcpy(file_paths[i], path, n + 1);
    atomic_store_explicit(&file_state[i], SLOT_LIVE, memory_order_release);
    return i;
}

void lidb_cleanup_forget_file(int slot) {
    if (slot < 0 || slot >= MAX_FILES) return;
    atomic_store_explicit(&file_state[slot], SLOT_FREE, memory_order_release);
}

int lidb_cleanup_remove_files(void) {
    int n = 0;
    for (int i = 0; i < MAX_FILES; i++) {
        if (atomic_load_explicit(&file_state[i], memory_order_acquire) == SLOT_LIVE) {
            unlink(file_paths[i]);
            n++;
        }
    }
    return n;
}

int lidb_cleanup_remember_folder(const char *path) {
    size_t n = strlen(path);
    if (n == 0 || n >= PATH_BYTES) return -1;
    int i = claim(folder_state, MAX_FOLDERS);
    if (i < 0) return -1;
    memcpy(folder_paths[i], path, n + 1);
    atomic_store_explicit(&folder_state[i], SLOT_LIVE, memory_order_release);
    return i;
}

void lidb_cleanup_forget_folder(int slot) {
    if (slot < 0 || slot >= MAX_FOLDERS) return;
    atomic_store_explicit(&folder_state[slot], SLOT_FREE, memory_order_release);
}

// The records getdents64 returns (the kernel's struct linux_dirent64).
struct dirent64_record {
    uint64_t ino;
    int64_t off;
    unsigned short reclen;
    unsigned char type;
    char name[];
};

// Removes `name` (relative to `parent`, or a path with AT_FDCWD) and, when it is a folder, its
// contents, without following symbolic links. Uses only system calls and stack memory.
static void remove_tree_at(int parent, const char *name, int depth) {
    if (unlinkat(parent, name, 0) == 0 || (errno != EISDIR && errno != EPERM)) return;
    int fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return;
    // Entries removed while listing can make the listing skip others: list again until a pass
    // finds nothing left (a few passes at most).
    for (int pass = 0; pass < 8; pass++) {
        int found = 0;
        if (lseek(fd, 0, SEEK_SET) != 0) break;
        char buffer[2048] __attribute__((aligned(8)));
        for (;;) {
            long n = syscall(SYS_getdents64, fd, buffer, sizeof buffer);
            if (n <= 0) break;
            for (long at = 0; at < n;) {
                struct dirent64_record *d = (struct dirent64_record *)(buffer + at);
                at += d->reclen;
                if (d->name[0] == '.' && (d->name[1] == 0 || (d->name[1] == '.' && d->name[2] == 0))) continue;
                found = 1;
                // Files are unlinked; folders (whatever d_type says: some filesystems say
                // DT_UNKNOWN) are emptied first, down to MAX_FOLDER_DEPTH.
                if (depth < MAX_FOLDER_DEPTH) {
                    remove_tree_at(fd, d->name, depth + 1);
                } else {
                    unlinkat(fd, d->name, 0);
                }
            }
        }
        if (!found) break;
    }
    close(fd);
    unlinkat(parent, name, AT_REMOVEDIR);
}

int lidb_cleanup_remove_folders(void) {
    int n = 0;
    for (int i = 0; i < MAX_FOLDERS; i++) {
        if (atomic_load_explicit(&folder_state[i], memory_order_acquire) == SLOT_LIVE) {
            remove_tree_at(AT_FDCWD, folder_paths[i], 0);
            n++;
        }
    }
    return n;
}

int lidb_cleanup_remember_mapping(const void *base, size_t length, const char *path) {
    size_t n = strlen(path);
    if (base == NULL || length == 0 || n >= PATH_BYTES) return -1;
    int i = claim(mapping_state, MAX_MAPPINGS);
    if (i < 0) return -1;
    mappings[i].base = (uintptr_t)base;
    mappings[i].length = length;
    memcpy(mappings[i].path, path, n + 1);
    atomic_store_explicit(&mapping_state[i], SLOT_LIVE, memory_order_release);
    return i;
}

void lidb_cleanup_forget_mapping(int slot) {
    if (slot < 0 || slot >= MAX_MAPPINGS) return;
    atomic_store_explicit(&mapping_state[slot], SLOT_FREE, memory_order_release);
}

static const int terminating[] = {SIGINT, SIGTERM, SIGHUP};
#define TERMINATING_COUNT (sizeof terminating / sizeof terminating[0])
static struct sigaction previous_terminating[TERMINATING_COUNT];
static struct sigaction previous_bus;
static char bus_prefix[256];
static char bus_message[512];
static int bus_exit_code = 2;
static atomic_flag installed = ATOMIC_FLAG_INIT;

static void write_all(const char *s) {
    size_t n = strlen(s);
    while (n > 0) {
        ssize_t w = write(2, s, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return;
        }
        s += w;
        n -= (size_t)w;
    }
}

static void on_terminating_signal(int sig) {
    int saved = errno;
    lidb_cleanup_remove_files();
    lidb_cleanup_remove_folders();
    // Restore what was there before (normally the default action) and deliver the signal again:
    // it is blocked while this handler runs, so it arrives as soon as the handler returns.
    for (size_t i = 0; i < TERMINATING_COUNT; i++) {
        if (terminating[i] == sig) sigaction(sig, &previous_terminating[i], NULL);
    }
    raise(sig);
    errno = saved;
}

static void on_bus_error(int sig, siginfo_t *info, void *context) {
    (void)context;
    uintptr_t address = (uintptr_t)info->si_addr;
    for (int i = 0; i < MAX_MAPPINGS; i++) {
        if (atomic_load_explicit(&mapping_state[i], memory_order_acquire) != SLOT_LIVE) continue;
        if (address >= mappings[i].base && address - mappings[i].base < mappings[i].length) {
            write_all(bus_prefix);
            write_all(mappings[i].path);
            write_all(": ");
            write_all(bus_message);
            write_all("\n");
            lidb_cleanup_remove_files();
            lidb_cleanup_remove_folders();
            _exit(bus_exit_code);
        }
    }
    lidb_cleanup_remove_files();
    lidb_cleanup_remove_folders();
    // Not a mapped input: hand over to whatever handled SIGBUS before (the default action, or the
    // runtime's crash reporter). A fault re-executes the instruction; a sent signal is raised again.
    sigaction(sig, &previous_bus, NULL);
    if (info->si_code <= 0) raise(sig);
}

void lidb_cleanup_install_handlers(const char *prefix, const char *message, int exit_code) {
    if (atomic_flag_test_and_set(&installed)) return;
    strncpy(bus_prefix, prefix, sizeof bus_prefix - 1);
    strncpy(bus_message, message, sizeof bus_message - 1);
    bus_exit_code = exit_code;

    for (size_t i = 0; i < TERMINATING_COUNT; i++) {
        struct sigaction old;
        if (sigaction(terminating[i], NULL, &old) != 0) continue;
        previous_terminating[i] = old;
        if (!(old.sa_flags & SA_SIGINFO) && old.sa_handler == SIG_IGN) continue;  // e.g. SIGHUP under nohup
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_terminating_signal;
        sigemptyset(&sa.sa_mask);
        for (size_t j = 0; j < TERMINATING_COUNT; j++) sigaddset(&sa.sa_mask, terminating[j]);
        sa.sa_flags = 0;
        sigaction(terminating[i], &sa, NULL);
        // A parent may have started us with these signals blocked (e.g. spawned from a thread pool
        // thread, whose mask children inherit); a handled signal must be deliverable.
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, terminating[i]);
        pthread_sigmask(SIG_UNBLOCK, &set, NULL);
    }

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_bus_error;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigaction(SIGBUS, &sa, &previous_bus);
}
