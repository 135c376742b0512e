/* Host stand-ins for the ACLE intrinsics the DSP path uses, with their exact Arm semantics, so the fast path
 * can be checked bit for bit on x86 (compile with -DNN_ACLE_SHIM). Not used on target builds. */
#ifndef ACLE_SHIM_H
#define ACLE_SHIM_H

#include <stdint.h>

/* SXTB16: sign-extend bytes 0 and 2 into the low and high halfwords. */
static inline int32_t __sxtb16(int32_t x)
{
    uint32_t u = (uint32_t)x;
    uint32_t lo = (uint32_t)(int32_t)(int8_t)(u & 0xFF) & 0xFFFFu;
    uint32_t hi = (uint32_t)(int32_t)(int8_t)((u >> 16) & 0xFF) & 0xFFFFu;
    return (int32_t)(lo | (hi << 16));
}

/* SMLAD: acc + lo(a)*lo(b) + hi(a)*hi(b), signed 16-bit halves, 32-bit wrap-around sum. */
static inline int32_t __smlad(int32_t a, int32_t b, int32_t acc)
{
    int32_t p0 = (int32_t)(int16_t)(a & 0xFFFF) * (int32_t)(int16_t)(b & 0xFFFF);
    int32_t p1 = (int32_t)(int16_t)((uint32_t)a >> 16) * (int32_t)(int16_t)((uint32_t)b >> 16);
    return (int32_t)((uint32_t)acc + (uint32_t)p0 + (uint32_t)p1);
}

/* SSAT: saturate to a signed `bits`-bit range. */
static inline int32_t __ssat(int32_t x, uint32_t bits)
{
    const int32_t max = (int32_t)((1u << (bits - 1)) - 1u), min = -max - 1;
    return x > max ? max : x < min ? min : x;
}

#endif /* ACLE_SHIM_H */
