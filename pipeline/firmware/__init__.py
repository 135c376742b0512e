"""Firmware: rendering the app, the bare-metal link, the emulator check, the vendor (SDK, Zephyr) builds and
programming the EVK (flashing)."""
