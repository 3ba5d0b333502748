// PNG and JPEG decoding through libpng and libjpeg. Both libraries report fatal errors by
// calling a handler that must not return; the handlers here longjmp back into the decoding
// function in this file, so no Swift frame is ever jumped over.
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <png.h>
#include <jpeglib.h>
#include <jerror.h>

#include "lidb_imaging.h"

void lidb_image_free(lidb_decoded_image *image) {
    if (image && image->pixels) {
        free(image->pixels);
        image->pixels = NULL;
    }
}

static int lidb_too_large(uint32_t w, uint32_t h, uint64_t max_pixels, uint32_t max_side) {
    return w > max_side || h > max_side || (uint64_t)w * (uint64_t)h > max_pixels;
}

// MARK: - PNG

typedef struct {
    const uint8_t *data;
    size_t size, pos;
    int truncated;
    char *message;
    jmp_buf jmp;
} lidb_png_ctx;

static void lidb_png_error(png_structp png, png_const_charp msg) {
    lidb_png_ctx *c = (lidb_png_ctx *)png_get_error_ptr(png);
    if (c->message[0] == 0) snprintf(c->message, 200, "%s", msg);
    longjmp(c->jmp, 1);
}

static void lidb_png_warning(png_structp png, png_const_charp msg) {
    (void)png;
    (void)msg;
}

static void lidb_png_read(png_structp png, png_bytep dst, size_t n) {
    lidb_png_ctx *c = (lidb_png_ctx *)png_get_io_ptr(png);
    if (n > c->size - c->pos) {
        c->truncated = 1;
        png_error(png, "unexpected end of data");
    }
    memcpy(dst, c->data + c->pos, n);
    c->pos += n;
}

int lidb_png_decode(const uint8_t *data, size_t size, uint64_t max_pixels, uint32_t max_side, lidb_decoded_image *out) {
    memset(out, 0, sizeof *out);
    lidb_png_ctx ctx;
    memset(&ctx, 0, sizeof ctx);
    ctx.data = data;
    ctx.size = size;
    ctx.message = out->message;
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &ctx, lidb_png_error, lidb_png_warning);
    if (!png) return LIDB_IMG_NO_MEMORY;
    png_infop info = png_create_info_struct(png);
    if (!info) {
        png_destroy_read_struct(&png, NULL, NULL);
        return LIDB_IMG_NO_MEMORY;
    }
    uint8_t *volatile pixels = NULL;
    png_bytep *volatile rows = NULL;
    if (setjmp(ctx.jmp)) {
        free(pixels);
        free(rows);
        png_destroy_read_struct(&png, &info, NULL);
        return ctx.truncated ? LIDB_IMG_TRUNCATED : LIDB_IMG_CORRUPT;
    }
    png_set_read_fn(png, &ctx, lidb_png_read);
    // Dimensions are checked against the caller's limits below, before any pixel memory.
    png_set_user_limits(png, 0x7fffffffU, 0x7fffffffU);
    png_read_info(png, info);

    png_uint_32 w = 0, h = 0;
    int depth = 0, type = 0, interlace = 0;
    png_get_IHDR(png, info, &w, &h, &depth, &type, &interlace, NULL, NULL);
    out->width = w;
    out->height = h;
    out->bit_depth = depth;
    out->color_type = type;
    out->channels = png_get_channels(png, info);
    out->has_trns = png_get_valid(png, info, PNG_INFO_tRNS) != 0;
    out->interlaced = interlace != PNG_INTERLACE_NONE;
    if (lidb_too_large(w, h, max_pixels, max_side)) {
        png_destroy_read_struct(&png, &info, NULL);
        return LIDB_IMG_TOO_LARGE;
    }

    if (type == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
    if (type == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
    if (out->has_trns) png_set_tRNS_to_alpha(png);
    if (depth == 16) png_set_strip_16(png);  // keeps the high byte of each sample
    if (type == PNG_COLOR_TYPE_GRAY || type == PNG_COLOR_TYPE_GRAY_ALPHA) png_set_gray_to_rgb(png);
    png_set_interlace_handling(png);
    png_read_update_info(png, info);

    int channels = png_get_channels(png, info);
    size_t rowbytes = png_get_rowbytes(png, info);
    if ((channels != 3 && channels != 4) || png_get_bit_depth(png, info) != 8 || rowbytes != (size_t)w * (size_t)channels) {
        png_error(png, "unexpected layout after transformations");
    }
    pixels = (uint8_t *)malloc(rowbytes * h);
    rows = (png_bytep *)malloc(sizeof(png_bytep) * h);
    if (!pixels || !rows) {
        free(pixels);
        free(rows);
        png_destroy_read_struct(&png, &info, NULL);
        return LIDB_IMG_NO_MEMORY;
    }
    for (png_uint_32 y = 0; y < h; y++) rows[y] = pixels + (size_t)y * rowbytes;
    png_read_image(png, rows);
    png_read_end(png, NULL);
    png_destroy_read_struct(&png, &info, NULL);
    free(rows);
    out->out_channels = channels;
    out->pixels = pixels;
    return LIDB_IMG_OK;
}

// MARK: - JPEG

typedef struct {
    struct jpeg_error_mgr pub;
    jmp_buf jmp;
    int code;
    char *message;
} lidb_jpeg_err;

static void lidb_jpeg_error_exit(j_common_ptr cinfo) {
    lidb_jpeg_err *e = (lidb_jpeg_err *)cinfo->err;
    if (e->message[0] == 0) {
        char buf[JMSG_LENGTH_MAX];
        (*cinfo->err->format_message)(cinfo, buf);
        snprintf(e->message, 200, "%s", buf);
    }
    e->code = LIDB_IMG_CORRUPT;
    longjmp(e->jmp, 1);
}

// Warnings (level -1) about damaged data become errors; trace messages (level >= 0) and
// warnings that do not affect the pixels are ignored.
static void lidb_jpeg_emit(j_common_ptr cinfo, int level) {
    if (level >= 0) return;
    int code = cinfo->err->msg_code;
    if (code == JWRN_EXTRANEOUS_DATA || code == JWRN_JFIF_MAJOR || code == JWRN_ADOBE_XFORM || code == JWRN_BOGUS_ICC) return;
    lidb_jpeg_err *e = (lidb_jpeg_err *)cinfo->err;
    if (e->message[0] == 0) {
        char buf[JMSG_LENGTH_MAX];
        (*cinfo->err->format_message)(cinfo, buf);
        snprintf(e->message, 200, "%s", buf);
    }
    e->code = code == JWRN_JPEG_EOF ? LIDB_IMG_TRUNCATED : LIDB_IMG_CORRUPT;
    longjmp(e->jmp, 1);
}

int lidb_jpeg_decode(const uint8_t *data, size_t size, uint64_t max_pixels, uint32_t max_side, lidb_decoded_image *out) {
    memset(out, 0, sizeof *out);
    struct jpeg_decompress_struct cinfo;
    lidb_jpeg_err err;
    memset(&cinfo, 0, sizeof cinfo);
    memset(&err, 0, sizeof err);
    err.message = out->message;
    cinfo.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = lidb_jpeg_error_exit;
    err.pub.emit_message = lidb_jpeg_emit;
    uint8_t *volatile pixels = NULL;
    if (setjmp(err.jmp)) {
        jpeg_destroy_decompress(&cinfo);
        free(pixels);
        return err.code;
    }
    jpeg_create_decompress(&cinfo);
    jpeg_mem_src(&cinfo, data, (unsigned long)size);
    jpeg_read_header(&cinfo, TRUE);
    out->width = cinfo.image_width;
    out->height = cinfo.image_height;
    out->bit_depth = cinfo.data_precision;
    out->color_type = (int)cinfo.jpeg_color_space;
    out->channels = cinfo.num_components;
    out->interlaced = cinfo.progressive_mode ? 1 : 0;
    if (lidb_too_large(cinfo.image_width, cinfo.image_height, max_pixels, max_side)) {
        jpeg_destroy_decompress(&cinfo);
        return LIDB_IMG_TOO_LARGE;
    }
    if (cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK) {
        snprintf(out->message, 200, "CMYK/YCCK JPEG");
        jpeg_destroy_decompress(&cinfo);
        return LIDB_IMG_UNSUPPORTED;
    }
    if (cinfo.data_precision != 8) {
        snprintf(out->message, 200, "%d-bit JPEG", cinfo.data_precision);
        jpeg_destroy_decompress(&cinfo);
        return LIDB_IMG_UNSUPPORTED;
    }
    cinfo.out_color_space = JCS_RGB;
    jpeg_start_decompress(&cinfo);
    if (cinfo.output_components != 3 || cinfo.output_width != cinfo.image_width || cinfo.output_height != cinfo.image_height) {
        snprintf(out->message, 200, "unexpected output layout");
        err.code = LIDB_IMG_CORRUPT;
        longjmp(err.jmp, 1);
    }
    size_t stride = (size_t)cinfo.output_width * 3;
    pixels = (uint8_t *)malloc(stride * cinfo.output_height);
    if (!pixels) {
        jpeg_destroy_decompress(&cinfo);
        return LIDB_IMG_NO_MEMORY;
    }
    while (cinfo.output_scanline < cinfo.output_height) {
        JSAMPROW row = pixels + (size_t)cinfo.output_scanline * stride;
        if (jpeg_read_scanlines(&cinfo, &row, 1) != 1) {
            snprintf(out->message, 200, "decoder returned no scanline");
            err.code = LIDB_IMG_CORRUPT;
            longjmp(err.jmp, 1);
        }
    }
    jpeg_finish_decompress(&cinfo);
    jpeg_destroy_decompress(&cinfo);
    out->out_channels = 3;
    out->pixels = pixels;
    return LIDB_IMG_OK;
}
