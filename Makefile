# Thin aliases for scripts/dev.sh (which also works where make is not installed).
.PHONY: run test setup bench deb

run:
	./scripts/dev.sh run

test:
	./scripts/dev.sh test

setup:
	./scripts/dev.sh setup --test

bench:
	./scripts/dev.sh bench

deb:
	./scripts/build-deb.sh
