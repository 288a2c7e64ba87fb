"""The engine driven directly (no HTTP): continuous batching must not change what a sequence says.

Every sequence here is greedy, so its tokens are fully determined by its prompt; the reference is
the same prompt run alone through ``model.generate()`` (its own loop and cache, no padding). The
engine must reproduce it token for token whatever it does to the batch around the sequence:
prompts of different lengths prefilled together (left padding), admissions while others are
mid-decode (the running cache and the new one padded to a common width and merged), and rows
leaving mid-batch by length, stop string, end-of-sequence or cancel (rows dropped, common padding
trimmed). The engine's ``step_hook`` runs the schedule on the engine thread itself, so "submit at
iteration 3" means exactly that, however busy the machine is.

The model is the project's tiny ERNIE-4.5 with one change: its output head is untied from the
input embedding and drawn afresh (seeded). With the shipped tied head a random model's greedy
output is its prompt's last token over and over, whatever the context, so a corrupted KV cache
would still match; with its own head the next token depends on what attention reads.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ernie_otel.engine import Engine, Event, SamplingParams, Sequence
from ernie_otel.stats import RequestStats
from ernie_otel.tiny_model import ensure_tiny_model

# Prompts of 1, 3, 12 and 22 tokens (checked in the fixture): the length mix decides which side
# of a merge gets padded and how much padding a trim can take back.
PROMPTS = {
    "tiny": "hi",
    "short": "hello world 42",
    "medium": "the model serves tokens to users with low latency and high throughput",
    "long": "推理 服务 监控 指标 延迟 吞吐 the queue waits for a slot in the running batch prometheus grafana jaeger "
            "collector metrics traces",
}
PROMPT_LENGTHS = {"tiny": 1, "short": 3, "medium": 12, "long": 22}
MAX_NEW = 40  # the longest generation any test asks for
WAIT_S = 120  # generous: a few dozen tiny-model steps take well under a second


@dataclass
class Job:
    """One sequence and its schedule, in engine iterations (calls of the step hook)."""

    prompt: str
    max_tokens: int
    submit_at: int = 0
    cancel_at: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = True
    events: list[Event] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    running_at_submit: int | None = None  # sequences in the running batch when this one was submitted
    seq: Sequence = field(init=False)

    def bind(self, prompt_ids: list[int]) -> None:
        params = SamplingParams(self.max_tokens, temperature=0.0, stop=self.stop, ignore_eos=self.ignore_eos)
        self.seq = Sequence(prompt_ids, params, RequestStats(self.prompt, "chat"), self._deliver)

    def _deliver(self, event: Event) -> None:  # engine thread
        self.events.append(event)
        if event.finish_reason is not None:
            self.done.set()

    @property
    def text(self) -> str:
        return "".join(e.delta for e in self.events)

    @property
    def finish_reason(self) -> str | None:
        return self.events[-1].finish_reason if self.events else None


class Model:
    """The tiny ERNIE-4.5, its tokenizer and solo greedy references."""

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model, self.tokenizer = model, tokenizer
        self._refs: dict[str, list[int]] = {}

    def ids(self, name: str) -> list[int]:
        return list(self.tokenizer(PROMPTS[name])["input_ids"])

    def solo(self, name: str) -> list[int]:
        """``MAX_NEW`` greedy tokens of the prompt alone, never stopping at end-of-sequence."""
        if name not in self._refs:
            ids = torch.tensor([self.ids(name)])
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                      max_new_tokens=MAX_NEW, min_new_tokens=MAX_NEW, eos_token_id=None,
                                      pad_token_id=self.tokenizer.pad_token_id)
            self._refs[name] = out[0, ids.shape[1]:].tolist()
            assert len(self._refs[name]) == MAX_NEW
        return self._refs[name]

    def decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def engine(self, max_num_seqs: int) -> Engine:
        return Engine(self.model, self.tokenizer, max_num_seqs=max_num_seqs, max_queue_len=16, max_model_len=512)


@pytest.fixture(scope="module")
def lm() -> Iterator[Model]:
    threads = torch.get_num_threads()
    # One thread, as ernie-serve runs the tiny model: both paths then reduce in the same order.
    torch.set_num_threads(1)
    path = ensure_tiny_model()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True,
                                                 tie_word_embeddings=False).eval()
    with torch.no_grad():  # the checkpoint has no head of its own: draw one, the same every run
        model.lm_head.weight.normal_(0.0, 0.02, generator=torch.Generator().manual_seed(0))
    m = Model(model, tokenizer)
    assert {name: len(m.ids(name)) for name in PROMPTS} == PROMPT_LENGTHS
    for name in PROMPTS:  # the references vary, so a sequence that read the wrong cache would differ
        assert len(set(m.solo(name))) >= 5, (name, m.solo(name))
    yield m
    torch.set_num_threads(threads)


@pytest.fixture
def engines() -> Iterator[list[Engine]]:
    """Engines a test starts; always shut down, even when the test fails mid-way."""
    started: list[Engine] = []
    yield started
    for engine in started:
        engine.step_hook = None
        engine.shutdown()


def run(engines: list[Engine], engine: Engine, lm: Model, jobs: list[Job]) -> None:
    """Run ``jobs`` on ``engine`` by their schedule; returns once the engine is idle again.

    The schedule needs a sequence running (or waiting) at every iteration up to the last action:
    an idle engine sleeps until a submit, and the hook that would submit is not called meanwhile.
    """
    for job in jobs:
        job.bind(lm.ids(job.prompt))
    iteration = itertools.count()
    errors: list[BaseException] = []
    last = max(max(j.submit_at, j.cancel_at or 0) for j in jobs)
    idle = threading.Event()

    def hook() -> None:  # engine thread, between iterations
        i = next(iteration)
        try:
            for job in jobs:
                if job.submit_at == i:
                    job.running_at_submit = engine.stats.running
                    engine.submit(job.seq)
                if job.cancel_at == i:
                    engine.cancel(job.seq)
        except BaseException as exc:  # surfaced by the test thread below
            errors.append(exc)
        # The hook also runs right before the engine sleeps: once everyone has left, the
        # engine's own bookkeeping is complete (a finish is delivered before its row leaves).
        if i >= last and engine.stats.running == 0 and engine.stats.waiting == 0:
            idle.set()

    engine.step_hook = hook
    engines.append(engine)
    engine.start()
    assert idle.wait(WAIT_S), f"the engine did not finish the schedule within {WAIT_S}s"
    assert not errors, errors
    unfinished = [job.prompt for job in jobs if not job.done.is_set()]
    assert not unfinished, f"the engine went idle with {unfinished} unfinished (idle before the schedule ended?)"


def expected(lm: Model, engine: Engine, job: Job) -> tuple[list[int], str, str]:
    """The tokens, text and finish reason the job must end with, from its solo reference."""
    ref = lm.solo(job.prompt)
    assert job.max_tokens <= len(ref)
    for n in range(1, job.max_tokens + 1):
        if not job.ignore_eos and ref[n - 1] in engine.eos_ids:
            return ref[:n - 1], lm.decode(ref[:n - 1]), "stop"  # the end-of-sequence token is not output
        text = lm.decode(ref[:n])
        hits = [text.find(s) for s in job.stop if s in text]
        if hits:
            return ref[:n], text[:min(hits)], "stop"
    return ref[:job.max_tokens], lm.decode(ref[:job.max_tokens]), "length"


def check(lm: Model, engine: Engine, job: Job) -> None:
    tokens, text, reason = expected(lm, engine, job)
    assert job.seq.output_ids == tokens, f"{job.prompt!r}: batched output differs from solo generate()"
    assert job.finish_reason == reason, job.prompt
    assert job.text == text, job.prompt
    assert [e.finish_reason for e in job.events[:-1]] == [None] * (len(job.events) - 1)


def test_prompts_of_mixed_lengths_prefilled_together_match_solo(lm: Model, engines: list[Engine]) -> None:
    # One prefill with left padding; the rows then leave one by one (by length), each leaving
    # row trimming the batch under the others.
    jobs = [Job("long", 6), Job("tiny", 24), Job("medium", 11), Job("short", 17)]
    engine = lm.engine(max_num_seqs=4)
    run(engines, engine, lm, jobs)
    for job in jobs:
        check(lm, engine, job)
    assert engine.stats.max_batch_seen == 4
    # Everyone left: the engine dropped its cache. It idles, then starts over from one sequence.
    assert engine.stats.running == 0
    again = Job("medium", 9, submit_at=-1)
    again.bind(lm.ids("medium"))
    engine.submit(again.seq)
    assert again.done.wait(WAIT_S)
    check(lm, engine, again)


def test_sequences_admitted_while_others_decode_match_solo(lm: Model, engines: list[Engine]) -> None:
    # A sequence admitted at iteration i has i' - i + 2 tokens after iteration i' (its prefill and
    # the decode step of the same iteration each give one); the running cache is 12 + i columns
    # wide at the start of iteration i while the 12-token anchor is the widest row.
    jobs = [
        Job("medium", 30, submit_at=0),  # the anchor: runs through the whole schedule
        # Iteration 3: a 1-token prompt joins a 15-wide cache: the new row is padded.
        Job("tiny", 8, submit_at=3),
        # Iteration 5: a 22-token prompt is wider than the 17-wide cache: the running rows are
        # padded instead. It is the row without padding, and it leaves first (iteration 8): the
        # trim takes the padding it no longer needs off every other row.
        Job("long", 5, submit_at=5),
        # Iteration 7: two at once with one slot free: the first is prefilled into the batch of
        # three, the second waits for the slot the long one frees.
        Job("short", 12, submit_at=7),
        Job("medium", 10, submit_at=7),
    ]
    engine = lm.engine(max_num_seqs=4)
    run(engines, engine, lm, jobs)
    for job in jobs:
        check(lm, engine, job)
    anchor, tiny, long_, short, late = jobs
    assert [j.running_at_submit for j in jobs] == [0, 1, 2, 3, 3]  # every later one joined a decoding batch
    assert anchor.seq.stats.decode_steps == 29 and anchor.seq.stats.max_batch_size == 4
    assert long_.seq.stats.finished < tiny.seq.stats.finished  # type: ignore[operator]
    # Of the two submitted together, the first went in at once and the second only once the long
    # one's slot had freed and the batch had been trimmed.
    assert (short.seq.stats.queue_length_at_arrival, late.seq.stats.queue_length_at_arrival) == (0, 1)
    assert short.seq.stats.scheduled < long_.seq.stats.finished < late.seq.stats.scheduled  # type: ignore[operator]


def test_rows_leaving_by_stop_eos_and_cancel_keep_the_others_exact(lm: Model, engines: list[Engine]) -> None:
    engine = lm.engine(max_num_seqs=4)
    # A stop string: the text of the first token from the 5th on that the greedy "tiny" text has
    # not shown before.
    ref = lm.solo("tiny")
    stop = next(piece for k in range(4, MAX_NEW) if (piece := lm.decode(ref[k:k + 1]).strip())
                and piece.isprintable() and "\ufffd" not in piece and piece not in lm.decode(ref[:k]))
    # An end-of-sequence token: one the "short" greedy text produces for the first time at its 7th
    # token or later. The others ignore end-of-sequence, so only that row leaves on it.
    eos_ref = lm.solo("short")
    at = next(i for i in range(6, MAX_NEW) if eos_ref[i] not in eos_ref[:i])
    engine.eos_ids = engine.eos_ids | {eos_ref[at]}
    jobs = [
        Job("long", 25, submit_at=0),
        Job("tiny", 30, submit_at=0, stop=(stop,)),
        Job("short", 30, submit_at=0, ignore_eos=False),
        Job("medium", 30, submit_at=0, cancel_at=4),  # cancelled mid-decode
        Job("medium", 30, submit_at=0, cancel_at=2),  # cancelled while it waits for a slot
        Job("tiny", 1, submit_at=6),  # finishes on its first token, in the prefill that admits it
        Job("short", 9, submit_at=8),  # admitted after all that, into the trimmed batch
    ]
    run(engines, engine, lm, jobs)
    anchor, stopped, eos, cancelled, never_ran, one, late = jobs
    for job in (anchor, stopped, eos, one, late):
        check(lm, engine, job)
    assert stopped.finish_reason == "stop" and len(stopped.seq.output_ids) < stopped.max_tokens
    assert eos.finish_reason == "stop" and eos.seq.output_ids == eos_ref[:at]
    assert one.seq.output_ids == lm.solo("tiny")[:1] and one.running_at_submit and one.running_at_submit > 0
    assert cancelled.finish_reason == "cancelled"
    produced = cancelled.seq.output_ids
    assert 0 < len(produced) < cancelled.max_tokens and produced == lm.solo("medium")[:len(produced)]
    assert never_ran.finish_reason == "cancelled" and never_ran.seq.stats.scheduled is None
    assert never_ran.seq.output_ids == []
    assert engine.stats.running == 0 and engine.stats.waiting == 0
