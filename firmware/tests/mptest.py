"""A minimal unittest-style runner for the MicroPython unix port (which ships no unittest).

Test modules define ``TestCase`` subclasses with ``test_*`` methods; ``run(modules)`` runs them and
prints one line per test; the process exits 1 when any failed.
"""

import sys


class SkipTest(Exception):
    pass


class TestCase:
    def setUp(self):
        pass

    def tearDown(self):
        pass

    def assertEqual(self, a, b, msg=None):
        if a != b:
            raise AssertionError(msg or "%r != %r" % (a, b))

    def assertTrue(self, value, msg=None):
        if not value:
            raise AssertionError(msg or "%r is not true" % (value,))

    def assertFalse(self, value, msg=None):
        if value:
            raise AssertionError(msg or "%r is not false" % (value,))

    def assertIsNone(self, value, msg=None):
        if value is not None:
            raise AssertionError(msg or "%r is not None" % (value,))

    def assertIn(self, item, container, msg=None):
        if item not in container:
            raise AssertionError(msg or "%r not in %r" % (item, container))

    def assertRaises(self, exc, fn, *args):
        try:
            fn(*args)
        except exc:
            return
        raise AssertionError("%s not raised" % exc.__name__)


def run(modules):
    passed = failed = 0
    for module in modules:
        for name in dir(module):
            cls = getattr(module, name)
            if not isinstance(cls, type) or cls is TestCase or not issubclass(cls, TestCase):
                continue
            for test in sorted(dir(cls)):
                if not test.startswith("test_"):
                    continue
                case = cls()
                label = "%s.%s.%s" % (module.__name__, name, test)
                try:
                    case.setUp()
                    try:
                        getattr(case, test)()
                    finally:
                        case.tearDown()
                except SkipTest:
                    print("SKIP", label)
                    continue
                except Exception as exc:
                    failed += 1
                    print("FAIL", label)
                    sys.print_exception(exc) if hasattr(sys, "print_exception") else print(repr(exc))
                    continue
                passed += 1
                print("ok  ", label)
    print("%d passed, %d failed" % (passed, failed))
    return failed == 0
