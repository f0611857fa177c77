bench:
	./run bench

test:
	./run test

.PHONY: bench test
