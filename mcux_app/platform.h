/* What main.c needs from the platform it runs on: a console, a cycle counter, optional extra input images and
 * an exit. One implementation per environment: platform_semihost.c (bare-metal RAM build, console over
 * semihosting, timing by SysTick), platform_mcux_sdk.c (MCUXpresso SDK debug console) and
 * zephyr_app/src/platform_zephyr.c. */
#ifndef PLATFORM_H
#define PLATFORM_H

#include <stdint.h>

void platform_init(void);

/* Write a NUL-terminated string to the console. */
void platform_write(const char *text);

/* Free-running count of core clock cycles (64 bits, so it never wraps during an inference). */
uint64_t platform_cycles(void);

/* Rate of platform_cycles(), in Hz, to turn cycles into milliseconds. */
uint32_t platform_cycles_hz(void);

/* Read the next extra input image (size bytes) into dst; return 1 if one was read, 0 when there are no more. */
int platform_next_image(uint8_t *dst, uint32_t size);

/* End of the application: status 0 is success. */
void platform_exit(int status);

#endif
