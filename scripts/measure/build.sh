#!/bin/bash
# A busy build for measuring ordinary fork rates: generates a C project of N files (default
# 300) in DIR, each with a generated header and source (sed) and compiled with gcc -O2 through
# sh -c as kbuild-style recipes do, then runs `make -j2` on it. Generate once, then time the
# build alone:
#
#   scripts/measure/build.sh DIR N --generate-only
#   scripts/measure/build.sh DIR N
set -euo pipefail
dir=$1 n=${2:-300} only=${3:-}
mkdir -p "$dir/src"
cd "$dir"
[ -e "src/m$n.c.in" ] && [ ! -e "src/m$((n + 1)).c.in" ] && [ -z "$only" ] || {
rm -f src/*
for i in $(seq "$n"); do
    cat > "src/m$i.c.in" <<C
#include "m$i.h"
static unsigned long mix_$i(unsigned long x) { return (x ^ (x >> 7)) * 0x9E3779B97F4A7C15ul; }
unsigned long f_$i(const unsigned long *v, int n)
{
    unsigned long acc = @SEED@;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < 4; j++)
            acc = mix_$i(acc + v[i] * (unsigned long)(j + $i));
    return acc;
}
C
    for k in 1 2 3 4 5 6; do
        printf 'unsigned long g_%d_%d(unsigned long x) { switch (x & 7) {' "$i" "$k"
        for c in 0 1 2 3 4 5 6; do printf ' case %d: return x * %d + %d;' "$c" $((c + k)) "$i"; done
        printf ' default: return x; } }\n'
    done >> "src/m$i.c.in"
done
{
    echo 'unsigned long run(void);'
    echo 'int main(void) { return (int)(run() & 1); }'
    echo 'unsigned long run(void) { unsigned long v[4] = {1, 2, 3, 4}, a = 0;'
    for i in $(seq "$n"); do echo "unsigned long f_$i(const unsigned long *, int); a += f_$i(v, 4);"; done
    echo 'return a; }'
} > src/main.c
}
[ -z "$only" ] || exit 0
cat > Makefile <<'MK'
SRCS := $(wildcard src/*.c.in)
OBJS := $(SRCS:src/%.c.in=obj/%.o) obj/main.o
CFLAGS := -O2 -Wall -Igen

prog: $(OBJS)
	@echo "  LD $@"; $(CC) -o $@ $^

gen/%.h:
	@mkdir -p gen; echo "unsigned long f_$*(const unsigned long *, int);" > $@

gen/%.c: src/%.c.in gen/%.h
	@sed -e "s/@SEED@/$$(echo $* | tr -dc 0-9)/" $< > $@

obj/%.o: gen/%.c
	@mkdir -p obj; echo "  CC $@"; $(CC) $(CFLAGS) -MMD -c -o $@ $<

obj/main.o: src/main.c
	@mkdir -p obj; $(CC) $(CFLAGS) -c -o $@ $<

clean:
	rm -rf obj gen prog
MK
make clean >/dev/null
exec make -j2 -s
