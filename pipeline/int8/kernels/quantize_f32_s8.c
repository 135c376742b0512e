/* Input placeholder: float NCHW -> int8 NHWC with Glow's quantize (round half to even, saturate).
 * inv_scale is a power of 2, so x * inv_scale is exact. rintf rounds half to even in the default rounding mode,
 * which nothing here changes; on FPv5 cores (Cortex-M7, M33) it is one VRINTX, elsewhere libm's rintf (the
 * firmware links libm for expf already). */
#include <math.h>

#include "nn_kernels.h"

static int8_t round_half_even_s8(float v)
{
    const float r = rintf(v);
    if (r >= 127.0f) return 127;
    return r > -128.0f ? (int8_t)(int32_t)r : -128; /* also NaN */
}

void quantize_f32_s8(const quantize_f32_s8_params *p, const float *input, int8_t *output)
{
    const int channels = p->channels, plane = p->height * p->width;
    const float inv_scale = p->inv_scale;
    for (int c = 0; c < channels; c++)
        for (int i = 0; i < plane; i++)
            output[(size_t)i * channels + c] = round_half_even_s8(input[(size_t)c * plane + i] * inv_scale);
}
