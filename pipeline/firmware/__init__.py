"""Firmware: rendering the app, the bare-metal link, the emulator check, and the vendor (SDK, Zephyr) builds."""
