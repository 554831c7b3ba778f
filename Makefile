# One command per chore, the same locally and in CI.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= ../shared/data
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install system-deps venv test unit integration lint format docs bench bench-server bench-stream bench-overload soak audit proto serve train-sentiment export-sentiment eval-sentiment clean

install: system-deps venv  ## everything: Debian packages, virtualenv, package with [train,dev] extras

system-deps:
	bash scripts/install-system-deps.sh

venv:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[train,dev]'

test: lint  ## the test command: lint, type check, then every test
	$(BIN)/python -m pytest -q

unit:
	$(BIN)/python -m pytest -q tests/unit

integration:
	$(BIN)/python -m pytest -q tests/integration

lint:
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/mypy

format:
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

docs:  ## regenerate the settings reference from the settings classes
	$(BIN)/sentistream settings --markdown > docs/reference/settings.md

bench:  ## throughput, cold start and RSS of the CLI; writes benchmarks/results/
	$(BIN)/python benchmarks/bench_classify.py --data $(DATA)/tweeteval/sentiment

# --- the shipped model: exactly how models/tweet-sentiment/1 was produced --------------------
SENTIMENT_RUN ?= runs/sentiment-v1
SENTIMENT_MODEL ?= src/sentistream/models/tweet-sentiment/1
TRAIN_SENTIMENT = $(BIN)/sentistream train --data $(DATA)/tweeteval/sentiment --output $(SENTIMENT_RUN) --epochs 3 --lr 5e-5 --batch-size 32 --max-length 128 --seed 42 --threads 2

train-sentiment:
	$(TRAIN_SENTIMENT)

export-sentiment:
	$(BIN)/sentistream export $(SENTIMENT_RUN) --output $(SENTIMENT_MODEL) --name tweet-sentiment --version 1 --verify-data $(DATA)/tweeteval/sentiment --command-line "$(TRAIN_SENTIMENT:$(BIN)/%=%)"

eval-sentiment:
	$(BIN)/sentistream evaluate $(DATA)/tweeteval/sentiment --split val --model tweet-sentiment:1 --output benchmarks/results/eval-tweet-sentiment-1.json

clean:
	rm -rf .mypy_cache .ruff_cache .pytest_cache build dist

bench-stream:  ## Redis in -> 2 workers -> Redis out vs a naive one-at-a-time loop; writes benchmarks/results/
	$(BIN)/python benchmarks/bench_stream.py --data $(DATA)/stream/tweets.jsonl

audit:  ## dependency audit; reports only (documented in docs/reliability.md), never fails
	-timeout 300 $(BIN)/pip-audit --progress-spinner off --local || echo "pip-audit: reported issues or could not reach the advisory service"

proto:  ## regenerate the gRPC/protobuf modules from proto/
	PYTHON=$(BIN)/python bash scripts/gen_proto.sh

bench-server:  ## our server (REST, gRPC) vs FastAPI + transformers pipeline; writes benchmarks/results/
	$(BIN)/python benchmarks/bench_server.py --data $(DATA)/tweeteval/sentiment --checkpoint $(SENTIMENT_RUN)

serve:  ## the model server on :8000 (HTTP) and :8500 (gRPC)
	$(BIN)/sentistream serve

MINUTES ?= 30
soak:  ## server + worker + Redis at half capacity for MINUTES (default 30); not in CI
	$(BIN)/python benchmarks/soak.py --minutes $(MINUTES)

bench-overload:  ## drive the server to 2x+ capacity; writes benchmarks/results/<date>-overload.json
	$(BIN)/python benchmarks/overload.py
