"""What the tests and the benchmarks share to drive the real thing: the daemon started and
awaited (`launcher`), a scrape parsed (`exposition`), command names no other program has
(`names`) and the C program that creates processes and threads under them (`creator`, built
from tests/helpers/creator.c). Nothing here asserts a result: the tests and the benchmarks
judge what they measure; this only starts, waits, parses and names.

It lives under tests/ because the tests are its first user and pytest already makes `tests` a
package; the benchmarks run from the repository root (`python -m benchmarks`), where `tests`
is importable too. The other way round, tests would import a measuring tool to run."""
