/* Input placeholder: float NCHW -> int8 NHWC with Glow's quantize (round half to even, saturate).
 * inv_scale is a power of 2, so x * inv_scale is exact. Written without libm. */
#include "nn_kernels.h"

static int8_t round_half_even_s8(float v)
{
    if (!(v > -129.0f)) return -128; /* also NaN */
    if (v > 128.0f) return 127;
    int32_t i = (int32_t)v; /* toward zero */
    const float r = v - (float)i;
    if (r > 0.5f || (r == 0.5f && (i & 1))) i++;
    else if (r < -0.5f || (r == -0.5f && (i & 1))) i--;
    return nn_saturate(i, -128);
}

void quantize_f32_s8(const float *input, int8_t *output, int channels, int height, int width, float inv_scale)
{
    const int plane = height * width;
    for (int c = 0; c < channels; c++)
        for (int i = 0; i < plane; i++)
            output[(size_t)i * channels + c] = round_half_even_s8(input[(size_t)c * plane + i] * inv_scale);
}
