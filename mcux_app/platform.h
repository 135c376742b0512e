/* What main.c needs from the platform it runs on: a console, a cycle counter, optional extra input images and
 * an exit. One implementation per environment: platform_semihost.c (bare-metal RAM build, console over
 * semihosting, timing by SysTick), platform_mcux_sdk.c (MCUXpresso SDK debug console) and
 * zephyr_app/src/platform_zephyr.c. */
#ifndef PLATFORM_H
#define PLATFORM_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" { /* tflm_app/main.cc is C++ */
#endif

void platform_init(void);

/* Write a NUL-terminated string to the console. */
void platform_write(const char *text);

/* Free-running count of core clock cycles (64 bits, so it never wraps during an inference). */
uint64_t platform_cycles(void);

/* A 32-bit hardware cycle counter (DWT CYCCNT, Xtensa CCOUNT) extended to 64 bits: a read smaller than the
 * previous one is a wrap. Read it at least once per wrap period (7 s at 600 MHz). */
typedef struct {
    uint32_t last;
    uint32_t wraps;
} platform_counter;

static inline uint64_t platform_counter_extend(platform_counter *counter, uint32_t now)
{
    if (now < counter->last) {
        ++counter->wraps;
    }
    counter->last = now;
    return ((uint64_t)counter->wraps << 32) | now;
}

/* Rate of platform_cycles(), in Hz, to turn cycles into milliseconds. */
uint32_t platform_cycles_hz(void);

/* Read the next extra input image (size bytes) into dst; return 1 if one was read, 0 when there are no more. */
int platform_next_image(uint8_t *dst, uint32_t size);

/* End of the application: status 0 is success. */
void platform_exit(int status);

#ifdef __cplusplus
}
#endif

#endif
