/* Confidence-output hardening; see hardening.h. Every step is one float32 operation in a fixed order so that
 * pipeline/hardening.py reproduces it exactly (sinf aside: libm implementations may differ by an ulp). */
#include "hardening.h"

#include <math.h>

float hardening_uniform_f32(uint32_t *state)
{
    uint32_t x = *state;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    *state = x;
    return (float)(x >> 8) * (1.0f / 16777216.0f);
}

/* Index of the largest value; the first one on a tie, like numpy.argmax. */
static int argmax_f32(const float *p, int n)
{
    int best = 0;
    for (int i = 1; i < n; ++i) {
        if (p[i] > p[best]) {
            best = i;
        }
    }
    return best;
}

/* Clamp negatives to zero and divide by the sum (summed left to right). If everything was clamped away, the
 * nearest valid output that keeps the decision is all the confidence on the original top class. */
static void clamp_and_renormalise_f32(float *p, int n, int top)
{
    float sum = 0.0f;
    for (int i = 0; i < n; ++i) {
        if (p[i] < 0.0f) {
            p[i] = 0.0f;
        }
        sum += p[i];
    }
    if (sum == 0.0f) {
        p[top] = 1.0f;
        return;
    }
    for (int i = 0; i < n; ++i) {
        p[i] = p[i] / sum;
    }
}

/* If the alteration moved the top-1 class, swap its value with the new leader's so the decision is kept. */
static void restore_top1_f32(float *p, int n, int top)
{
    const int leader = argmax_f32(p, n);
    if (leader != top) {
        const float value = p[leader];
        p[leader] = p[top];
        p[top] = value;
    }
}

void harden_round_f32(float *p, int n, float step)
{
    for (int i = 0; i < n; ++i) {
        p[i] = floorf(p[i] / step + 0.5f) * step;
    }
}

void harden_noise_f32(float *p, int n, float noise_range, uint32_t *rng_state)
{
    const int top = argmax_f32(p, n);
    for (int i = 0; i < n; ++i) {
        const float noise = (2.0f * hardening_uniform_f32(rng_state) - 1.0f) * noise_range;
        p[i] = p[i] + noise;
    }
    clamp_and_renormalise_f32(p, n, top);
    restore_top1_f32(p, n, top);
}

void harden_pseudo_noise_sin_f32(float *p, int n)
{
    const int top = argmax_f32(p, n);
    for (int i = 0; i < n; ++i) {
        const float wave = 0.1f * sinf(50.0f * (p[i] - 0.09f));
        p[i] = (p[i] + 0.05f) + wave;
    }
    clamp_and_renormalise_f32(p, n, top);
    restore_top1_f32(p, n, top);
}

void harden_confidences(float *p, int n, hardening_config *cfg)
{
    switch (cfg->method) {
    case HARDENING_ROUND:
        harden_round_f32(p, n, cfg->step);
        break;
    case HARDENING_NOISE:
        harden_noise_f32(p, n, cfg->noise_range, &cfg->rng_state);
        break;
    case HARDENING_PSEUDO_NOISE_SIN:
        harden_pseudo_noise_sin_f32(p, n);
        break;
    case HARDENING_NONE:
    default:
        break;
    }
}
