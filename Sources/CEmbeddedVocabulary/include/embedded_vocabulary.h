#ifndef LIDB_EMBEDDED_VOCABULARY_H
#define LIDB_EMBEDDED_VOCABULARY_H

#include <stddef.h>

/// CLIP's BPE vocabulary, compiled into the program so that a base converted from a single-file
/// checkpoint gets a tokenizer without any other file. Each function returns one zstd frame
/// (level 19, content size and checksum declared) and stores its length in *size:
/// `vocab.json` and `merges.txt` exactly as samples/clip-tokenizer holds them (written by
/// converters/embed_vocabulary.py; a test checks that they decode to those files).
const unsigned char *lidb_clip_vocab_json_zst(size_t *size);
const unsigned char *lidb_clip_merges_txt_zst(size_t *size);

#endif
