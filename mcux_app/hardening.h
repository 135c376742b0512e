/* Confidence-output hardening against model cloning and inversion (NXP UM11226): after softmax, the firmware
 * reports altered confidences that keep the decision but hide the model's exact output.
 *
 * pipeline/hardening.py has the same functions in numpy float32 and must give the same numbers: keep the two
 * in step. Compile this file with -ffp-contract=off (GCC's default outside ISO C mode is to fuse a*b+c into
 * one FMA on cores that have it, e.g. Cortex-M7/M33, which changes the last bit compared with the host). */
#ifndef HARDENING_H
#define HARDENING_H

#include <stdint.h>

typedef enum {
    HARDENING_NONE = 0,
    HARDENING_ROUND = 1,            /* round each confidence to a multiple of `step`; ties may appear */
    HARDENING_NOISE = 2,            /* add uniform noise in [-noise_range, noise_range), renormalise */
    HARDENING_PSEUDO_NOISE_SIN = 3  /* c + 0.05 + 0.1 * sin(50 * (c - 0.09)), renormalise */
} hardening_method;

typedef struct {
    hardening_method method;
    float step;          /* HARDENING_ROUND */
    float noise_range;   /* HARDENING_NOISE */
    uint32_t rng_state;  /* HARDENING_NOISE: xorshift32 state, nonzero; every call advances it by n draws */
} hardening_config;

/* Next xorshift32 draw as a float in [0, 1) with 24 random bits, so it is exact in float32. */
float hardening_uniform_f32(uint32_t *state);

void harden_round_f32(float *p, int n, float step);
void harden_noise_f32(float *p, int n, float noise_range, uint32_t *rng_state);
void harden_pseudo_noise_sin_f32(float *p, int n);

/* Apply cfg->method to the n confidences in p, in place. */
void harden_confidences(float *p, int n, hardening_config *cfg);

#endif
