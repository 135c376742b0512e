/* The per-image console block both firmware apps print (main.c.j2 for the bundle, tflm_app/main.cc for TFLite
 * Micro), in the format pipeline/firmware/emulator.py parses: raw output bits (for bit-exact checks against a
 * host reference), top-1 class, softmax confidence, cycles and time. Header-only so every build that puts
 * mcux_app/ on its include path (bare metal, MCUXpresso SDK, Zephyr) gets it without another source file. */
#ifndef CONSOLE_H
#define CONSOLE_H

#include <stdint.h>
#include <string.h>
#include <math.h>

#include "platform.h"

static inline void print_uint(uint64_t value)
{
    char text[21];
    int at = (int)sizeof text - 1;
    text[at] = '\0';
    do {
        text[--at] = (char)('0' + value % 10u);
        value /= 10u;
    } while (value != 0u);
    platform_write(&text[at]);
}

static inline void print_hex32(uint32_t value)
{
    static const char digits[] = "0123456789ABCDEF";
    char text[11] = "0x";
    for (int i = 0; i < 8; ++i) {
        text[2 + i] = digits[(value >> (28 - 4 * i)) & 0xFu];
    }
    text[10] = '\0';
    platform_write(text);
}

static inline uint32_t float_bits(float value)
{
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    return bits;
}

/* A probability in [0, 1] as 0.xxx (rounded to three decimals; 1.000 when it rounds up). */
static inline void print_probability(float value)
{
    uint32_t thousandths = (uint32_t)(value * 1000.0f + 0.5f);
    char text[6] = {(char)('0' + thousandths / 1000u), '.', (char)('0' + thousandths / 100u % 10u),
                    (char)('0' + thousandths / 10u % 10u), (char)('0' + thousandths % 10u), '\0'};
    platform_write(text);
}

/* Softmax of the logits into probabilities (step 19 of the note), shifted by the maximum so expf cannot
 * overflow. */
static inline void softmax(const float *logits, float *probabilities, int count)
{
    float maximum = logits[0];
    for (int i = 1; i < count; ++i) {
        maximum = logits[i] > maximum ? logits[i] : maximum;
    }
    float sum = 0.0f;
    for (int i = 0; i < count; ++i) {
        probabilities[i] = expf(logits[i] - maximum);
        sum += probabilities[i];
    }
    for (int i = 0; i < count; ++i) {
        probabilities[i] /= sum;
    }
}

static inline int argmax(const float *values, int count)
{
    int best = 0;
    for (int i = 1; i < count; ++i) {
        if (values[i] > values[best]) {
            best = i;
        }
    }
    return best;
}

/* One image's block: its logits' bits, then the top-1 of `probabilities` (the softmax, hardened or not). */
static inline void print_image_result(uint32_t image, const float *logits, const float *probabilities, int count,
                                      const char *const *labels, uint64_t cycles)
{
    int top1 = argmax(probabilities, count);

    platform_write("Image = ");
    print_uint(image);
    platform_write("\r\nOutput bits =");
    for (int i = 0; i < count; ++i) {
        platform_write(" ");
        print_hex32(float_bits(logits[i]));
    }
    platform_write("\r\nTop1 class = ");
    print_uint((uint32_t)top1);
    platform_write(" (");
    platform_write(labels[top1]);
    platform_write(")\r\nConfidence = ");
    print_probability(probabilities[top1]);
    platform_write("\r\nConfidence bits = ");
    print_hex32(float_bits(probabilities[top1]));
    platform_write("\r\nCycles = ");
    print_uint(cycles);
    platform_write("\r\nInference time = ");
    print_uint(cycles * 1000u / platform_cycles_hz());
    platform_write(" (ms)\r\n");
}

#endif
