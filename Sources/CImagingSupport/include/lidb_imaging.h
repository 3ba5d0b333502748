#ifndef LIDB_IMAGING_H
#define LIDB_IMAGING_H

#include <stddef.h>
#include <stdint.h>

/// Result codes of the decoders. Errors raised inside libpng/libjpeg are caught in C
/// (setjmp/longjmp never crosses a Swift frame) and reported through these codes.
enum {
    LIDB_IMG_OK = 0,
    LIDB_IMG_TRUNCATED = 1,    /// the data ends before the image does
    LIDB_IMG_CORRUPT = 2,      /// the decoder rejected the data; `message` says why
    LIDB_IMG_TOO_LARGE = 3,    /// the header's dimensions exceed the limits (checked before allocation)
    LIDB_IMG_UNSUPPORTED = 4,  /// a valid image of a kind not supported (e.g. CMYK JPEG)
    LIDB_IMG_NO_MEMORY = 5,
};

typedef struct {
    uint32_t width, height;       /// as stored in the file
    int bit_depth;                /// bits per sample in the file
    int color_type;               /// PNG colour type, or the JPEG colour space (libjpeg J_COLOR_SPACE)
    int channels;                 /// samples per pixel in the file (palette: 1)
    int has_trns;                 /// PNG: a tRNS chunk was present
    int interlaced;               /// PNG: Adam7; JPEG: progressive
    int out_channels;             /// 3 (RGB) or 4 (RGBA), 8 bits each
    uint8_t *pixels;              /// width × height × out_channels, malloc'd; free with lidb_image_free
    char message[200];            /// decoder message for errors
} lidb_decoded_image;

/// Decodes a PNG held in memory to 8-bit RGB or RGBA (16-bit samples keep their high byte).
int lidb_png_decode(const uint8_t *data, size_t size, uint64_t max_pixels, uint32_t max_side, lidb_decoded_image *out);
/// Decodes a JPEG held in memory to 8-bit RGB. Premature end of data and corrupt entropy-coded
/// data are errors, not warnings.
int lidb_jpeg_decode(const uint8_t *data, size_t size, uint64_t max_pixels, uint32_t max_side, lidb_decoded_image *out);
void lidb_image_free(lidb_decoded_image *image);

#endif
