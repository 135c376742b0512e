/* Startup for a bare-metal RAM build on any Armv7-M / Armv8-M core: the vector table, then Reset_Handler
 * points VTOR at it, turns the FPU on and zeroes .bss before main(). A RAM build is loaded whole by the
 * debugger (or the emulator), so .data is already in place: load address = run address, nothing to copy. */
#include <stdint.h>

#include "platform.h"

#define SCB_VTOR (*(volatile uint32_t *)0xE000ED08u)
#define SCB_CPACR (*(volatile uint32_t *)0xE000ED88u)
#define CPACR_CP10_CP11_FULL_ACCESS (0xFu << 20)

extern uint32_t __stack_top;
extern uint32_t __bss_start__;
extern uint32_t __bss_end__;
extern int main(void);

void Reset_Handler(void);
void Fault_Handler(void);
void SysTick_Handler(void) __attribute__((weak, alias("Fault_Handler")));

typedef void (*vector_entry)(void);

/* Core exceptions only: the application uses no peripheral interrupts. */
__attribute__((section(".vectors"), used)) const vector_entry vector_table[16] = {
    (vector_entry)(uintptr_t)&__stack_top,
    Reset_Handler,
    Fault_Handler, /* NMI */
    Fault_Handler, /* HardFault */
    Fault_Handler, /* MemManage */
    Fault_Handler, /* BusFault */
    Fault_Handler, /* UsageFault */
    Fault_Handler, /* SecureFault (Armv8-M) */
    0,
    0,
    0,
    Fault_Handler, /* SVCall */
    Fault_Handler, /* DebugMonitor */
    0,
    Fault_Handler, /* PendSV */
    SysTick_Handler,
};

void Reset_Handler(void)
{
    SCB_VTOR = (uint32_t)(uintptr_t)vector_table;
    SCB_CPACR |= CPACR_CP10_CP11_FULL_ACCESS;
    __asm__ volatile("dsb\n\tisb" ::: "memory");
    for (uint32_t *word = &__bss_start__; word < &__bss_end__; ++word) {
        *word = 0u;
    }
    platform_exit(main());
}

/* Any unexpected exception: say which one and stop, so a test sees a clear failure instead of a hang. */
void Fault_Handler(void)
{
    static const char digits[] = "0123456789";
    uint32_t ipsr;
    __asm__ volatile("mrs %0, ipsr" : "=r"(ipsr));
    char text[] = "Fault: exception 000\r\n";
    text[17] = digits[(ipsr / 100u) % 10u];
    text[18] = digits[(ipsr / 10u) % 10u];
    text[19] = digits[ipsr % 10u];
    platform_write(text);
    platform_exit(2);
    for (;;) {
    }
}
