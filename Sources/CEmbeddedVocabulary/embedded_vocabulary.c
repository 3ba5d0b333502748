// The data is taken in by the preprocessor (#embed, C23; clang ≥ 19 and GCC ≥ 15 accept it in
// earlier modes too), so the files stay binary in the repository and cost a fraction of a second
// to compile. The file names are resolved relative to this file.
#include "embedded_vocabulary.h"

#pragma clang diagnostic ignored "-Wc23-extensions"

static const unsigned char vocab_json_zst[] = {
#embed "clip-vocab.json.zst"
};

static const unsigned char merges_txt_zst[] = {
#embed "clip-merges.txt.zst"
};

const unsigned char *lidb_clip_vocab_json_zst(size_t *size) {
    *size = sizeof vocab_json_zst;
    return vocab_json_zst;
}

const unsigned char *lidb_clip_merges_txt_zst(size_t *size) {
    *size = sizeof merges_txt_zst;
    return merges_txt_zst;
}
