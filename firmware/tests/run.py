"""Run the firmware's tests on MicroPython: micropython firmware/tests/run.py (MICROPYPATH set by
tests/firmware/test_firmware.py, which also runs this file)."""

import sys

import mptest
import test_board
import test_engine
import test_logic

sys.exit(0 if mptest.run([test_engine, test_logic, test_board]) else 1)
