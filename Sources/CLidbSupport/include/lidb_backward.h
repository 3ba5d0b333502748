#ifndef LIDB_BACKWARD_H
#define LIDB_BACKWARD_H

#include <stddef.h>

// Backward (input-gradient) kernels of the training path. Each takes the layer's input (the
// forward is recomputed where needed, nothing else is stored) and the gradient of the loss with
// respect to the layer's output; spec/compute.md states the formulas.

/// Group normalisation backward for groups [group_begin, group_end) of `groups` over
/// x [channels × hw]: gx = ∂loss/∂x given gy = ∂loss/∂y, where y = GN(x)·weight + bias (then SiLU
/// when `silu` ≠ 0; gy is then the gradient after the SiLU). Statistics as the forward (double).
/// gx may be gy (in place), not x.
void lidb_group_norm_backward(const float *x, const float *gy, float *gx, size_t channels, size_t hw, size_t group_begin,
                              size_t group_end, size_t groups, const float *weight, const float *bias, float eps, int silu);
/// Layer normalisation backward over the rows of x [rows × c] (y = LN(x)·weight + bias). gx may be gy.
void lidb_layer_norm_backward(const float *x, const float *gy, float *gx, size_t rows, size_t c, const float *weight, float eps);
/// Softmax backward, in place: g ← y ⊙ (g − Σ_j g_j·y_j) per row of y, g [rows × cols], where y is
/// the softmax output and g the gradient with respect to it.
void lidb_softmax_backward_rows(const float *y, float *g, size_t rows, size_t cols);
/// gx = gy · GELU'(x) (erf form): GELU'(x) = Φ(x) + x·φ(x). gx may be gy.
void lidb_gelu_erf_backward(const float *x, const float *gy, float *gx, size_t n);
/// gx = gy · d/dx[x·σ(1.702x)]. gx may be gy.
void lidb_quick_gelu_backward(const float *x, const float *gy, float *gx, size_t n);
/// gx = gy · d/dx[x·σ(x)] = gy · σ(x)·(1 + x·(1 − σ(x))). gx may be gy.
void lidb_silu_backward(const float *x, const float *gy, float *gx, size_t n);
/// GEGLU backward: proj [rows × 2·inner] (h = first half, g = second half of each row),
/// gout [rows × inner] → gproj [rows × 2·inner]: gh = gout·GELU(g), gg = gout·h·GELU'(g).
void lidb_geglu_backward(const float *proj, const float *gout, float *gproj, size_t rows, size_t inner);
/// The adjoint of `lidb_im2col`: x [c × h × w] += the columns col [c·k·k × ncols] of the output
/// positions [col0, col0 + ncols) scattered back to the input positions they were read from
/// (padding positions dropped). Handles the channels [c_begin, c_end) (disjoint for threads).
void lidb_col2im(const float *col, size_t c, size_t h, size_t w, size_t k, size_t stride, size_t pad, size_t col0, size_t ncols,
                 size_t c_begin, size_t c_end, float *x);
/// Nearest 2× upsampling backward: gx [planes × h × w] = the sum of each 2×2 block of gy
/// [planes × 2h × 2w].
void lidb_upsample_nearest2x_backward(const float *gy, float *gx, size_t planes, size_t h, size_t w);

#endif
