/* Bare-metal platform (the SDK's "Semihost" debug console option): console and file reads over Arm
 * semihosting, so the same ELF talks to a debugger on the EVK or to QEMU's -semihosting; timing by SysTick on
 * the core clock.
 *
 * Extra input images: when the semihosting command line has a second word, it names a file of raw input
 * tensors (the network's input placeholder bytes, back to back) read one image at a time. */
#include <stddef.h>
#include <stdint.h>

#include "platform.h"

#ifndef BOARD_CPU_HZ
#error "define BOARD_CPU_HZ (the core clock in Hz, boards/<board>.toml cpu_hz)"
#endif

#define SYS_OPEN 0x01
#define SYS_CLOSE 0x02
#define SYS_WRITE0 0x04
#define SYS_READ 0x06
#define SYS_GET_CMDLINE 0x15
#define SYS_EXIT_EXTENDED 0x20
#define ADP_STOPPED_APPLICATION_EXIT 0x20026
#define OPEN_MODE_READ_BINARY 1

#define SYST_CSR (*(volatile uint32_t *)0xE000E010u)
#define SYST_RVR (*(volatile uint32_t *)0xE000E014u)
#define SYST_CVR (*(volatile uint32_t *)0xE000E018u)
#define SYST_CSR_ENABLE_TICKINT_CORECLK 0x7u
#define SYST_PERIOD (1u << 24)

static volatile uint32_t systick_wraps;
static int images_file = -1;

static int semihost_call(int operation, void *argument)
{
    register int r0 __asm__("r0") = operation;
    register void *r1 __asm__("r1") = argument;
    __asm__ volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

/* The semihosting command line's second word (the first names the program), or NULL. */
static const char *images_file_name(char *buffer, int size)
{
    struct {
        char *buffer;
        int size;
    } block = {buffer, size - 1};
    if (semihost_call(SYS_GET_CMDLINE, &block) != 0) {
        return NULL;
    }
    buffer[block.size] = '\0';
    char *word = buffer;
    while (*word != '\0' && *word != ' ') {
        ++word;
    }
    while (*word == ' ') {
        ++word;
    }
    for (char *end = word; *end != '\0'; ++end) {
        if (*end == ' ') {
            *end = '\0';
            break;
        }
    }
    return *word != '\0' ? word : NULL;
}

void platform_init(void)
{
    SYST_RVR = SYST_PERIOD - 1u;
    SYST_CVR = 0u;
    SYST_CSR = SYST_CSR_ENABLE_TICKINT_CORECLK;

    static char command_line[256];
    const char *name = images_file_name(command_line, (int)sizeof command_line);
    if (name != NULL) {
        struct {
            const char *name;
            int mode;
            int length;
        } block = {name, OPEN_MODE_READ_BINARY, 0};
        while (name[block.length] != '\0') {
            ++block.length;
        }
        images_file = semihost_call(SYS_OPEN, &block);
        if (images_file < 0) {
            platform_write("Cannot open the images file named on the semihosting command line\r\n");
            platform_exit(3);
        }
    }
}

void SysTick_Handler(void)
{
    ++systick_wraps;
}

uint64_t platform_cycles(void)
{
    uint32_t wraps;
    uint32_t count;
    do { /* a wrap between the two reads shows as a changed wrap count: read again */
        wraps = systick_wraps;
        count = SYST_CVR;
    } while (wraps != systick_wraps);
    return (uint64_t)wraps * SYST_PERIOD + (SYST_PERIOD - 1u - count);
}

uint32_t platform_cycles_hz(void)
{
    return BOARD_CPU_HZ;
}

void platform_write(const char *text)
{
    semihost_call(SYS_WRITE0, (void *)text);
}

int platform_next_image(uint8_t *dst, uint32_t size)
{
    if (images_file < 0) {
        return 0;
    }
    struct {
        int handle;
        uint8_t *buffer;
        uint32_t size;
    } block = {images_file, dst, size};
    return semihost_call(SYS_READ, &block) == 0; /* SYS_READ returns the count of bytes NOT read */
}

void platform_exit(int status)
{
    if (images_file >= 0) {
        semihost_call(SYS_CLOSE, &images_file);
        images_file = -1;
    }
    struct {
        uint32_t reason;
        uint32_t code;
    } block = {ADP_STOPPED_APPLICATION_EXIT, (uint32_t)status};
    semihost_call(SYS_EXIT_EXTENDED, &block);
    for (;;) { /* no debugger to stop us: idle */
    }
}
