"""The gateway's book seen through the simulator's views: values derived by hand."""

from __future__ import annotations

from l4.gateway.book import LiveCluster, LiveInstance, LiveRequest
from l4.gateway.scrape import EngineLoad
from l4.instance.sequence import SeqState, Sequence
from l4.request import RequestSpec


def live(rid: int, prompt: int, *, pinned: bool = False) -> LiveRequest:
    spec = RequestSpec(request_id=rid, arrival_s=0.0, input_tokens=prompt, output_tokens=100)
    return LiveRequest(Sequence(spec), list(range(prompt)), pinned=pinned)


def cluster(n: int = 2, blocks: int = 100, budget: int = 2, seqs: int = 256) -> LiveCluster:
    """By default a step's token budget (2) goes to two decodes, so no queued prompt starts."""
    return LiveCluster(
        [
            LiveInstance(
                i,
                num_kv_blocks=blocks,
                block_size_tokens=16,
                max_num_batched_tokens=budget,
                max_num_seqs=seqs,
            )
            for i in range(n)
        ],
        clock=lambda: 5.0,
    )


def test_views_count_queued_and_decoding_requests() -> None:
    c = cluster()
    a, b, q = live(1, 40), live(2, 10), live(3, 20)
    for r in (a, b, q):
        c.admit(r, 0)
    for r in (a, b):
        c.started(r, 1.0)
    a.seq.generated_tokens = 9  # length 49
    b.seq.generated_tokens = 1  # length 11
    v = c.instance(0)
    assert (v.num_waiting, v.num_running) == (1, 2)
    assert v.decode_length_stats() == (2, 60, 49)
    assert [s.request_id for s in v.running()] == [1, 2]
    assert [s.request_id for s in v.waiting()] == [3]
    # KV: ceil(49/16) + ceil(11/16) = 4 + 1 blocks held; the queued prompt needs ceil(21/16).
    assert v.free_blocks() == 95 and v.kv_usage == 0.05
    assert v.waiting_demand_blocks() == 2
    assert v.pending_prefill() == (20, 200.0)  # its whole prompt, pairs 20 * 20 / 2
    assert v.length_of(a.seq) == 49


def test_prompts_the_step_budget_reaches_count_as_running_as_vllm_counts_them() -> None:
    # Budget 100 tokens, 4 sequences; 2 decode (1 token each): 98 tokens and 2 seats are left.
    c = cluster(budget=100, seqs=4)
    d1, d2 = live(1, 5), live(2, 5)
    queued = [live(3, 50), live(4, 40), live(5, 30)]
    for r in (d1, d2, *queued):
        c.admit(r, 0)
    c.started(d1, 1.0)
    c.started(d2, 1.0)
    v = c.instance(0)
    # 50 starts (98 -> 48 left), 40 starts (48 -> 8 left), then no seat is left for the 30.
    assert (v.num_running, v.num_waiting) == (4, 1)
    assert [s.request_id for s in v.running()] == [1, 2, 3, 4]
    assert [s.request_id for s in v.waiting()] == [5]
    # With seats to spare the budget decides: 8 tokens left still start the 30-token prompt
    # (its first chunk), and nothing is left for a fourth one.
    c.instances[0].max_num_seqs = 256
    c.admit(live(6, 10), 0)
    assert (v.num_running, v.num_waiting) == (5, 1)
    assert [s.request_id for s in v.waiting()] == [6]
    # The oldest prompt's first token: it decodes now, and the budget left reaches one more.
    c.started(queued[0], 2.0)
    assert (v.num_running, v.num_waiting) == (6, 0)


def test_foreign_load_is_what_the_scrape_shows_beyond_the_book() -> None:
    c = cluster()
    r = live(1, 32)
    c.admit(r, 0)
    c.started(r, 0.0)  # 2 blocks of our own
    inst = c.instances[0]
    inst.observe(EngineLoad(recognized=True, num_running=4, num_waiting=2, kv_usage=0.1), 1.0)
    # 6 at the engine, 1 of ours: 5 foreign, split 4:2 -> 3 running, 2 waiting (integer part).
    assert (inst.num_running, inst.num_waiting) == (1 + 3, 0 + 2)
    assert inst.free_blocks() == 100 - 2 - (10 - 2)  # the scrape's 10 blocks include our 2
    # A scrape that knows less than the book adds nothing.
    inst.observe(EngineLoad(recognized=True, num_running=0, num_waiting=0, kv_usage=0.0), 2.0)
    assert (inst.num_running, inst.num_waiting, inst.free_blocks()) == (1, 0, 98)


def test_a_started_prompt_holds_its_blocks_and_is_neither_foreign_nor_demand() -> None:
    # Budget 100: the 64-token prompt has started (its blocks are allocated at the engine), the
    # 48-token one behind it too (36 tokens of budget left), the 32-token one waits.
    c = cluster(budget=100)
    started, second, queued = live(1, 64), live(2, 48), live(3, 32)
    for r in (started, second, queued):
        c.admit(r, 0)
    inst = c.instances[0]
    assert inst.num_running == 2
    # Held: ceil(64/16) + ceil(48/16) = 4 + 3 blocks; demand: the queued prompt, ceil(33/16).
    assert inst.free_blocks() == 93 and inst.waiting_demand_blocks() == 3
    # The engine shows those 7 blocks (and the three requests): nothing of it is foreign.
    inst.observe(EngineLoad(recognized=True, num_running=2, num_waiting=1, kv_usage=0.07), 1.0)
    assert inst.free_blocks() == 93 and inst.waiting_demand_blocks() == 3
    # Its first token: it decodes now, still on the same blocks (no double count until the
    # next scrape), and the budget it leaves reaches the queued prompt, no longer a demand.
    c.started(started, 2.0)
    started.seq.generated_tokens = 1
    assert inst.free_blocks() == 100 - 5 - 3 - 2 and inst.waiting_demand_blocks() == 0


def test_finishing_releases_the_requests_tokens() -> None:
    c = cluster()
    r = live(1, 30)
    c.admit(r, 1)
    c.started(r, 0.0)
    r.seq.generated_tokens = 5
    c.finish(r, 2.0)
    assert c.instance(1).released_tokens == 35 and c.in_flight() == 0
    assert r.seq.state is SeqState.FINISHED and r.seq.finish_s == 2.0


def test_migrate_marks_a_move_and_refuses_what_cannot_move() -> None:
    c = cluster(3)
    r, pinned = live(1, 10), live(2, 10, pinned=True)
    c.admit(r, 0)
    c.admit(pinned, 0)
    cuts: list[int] = []
    r.interrupt = lambda: cuts.append(1)
    assert not c.migrate(r.seq, 1, 2, "balance")  # not at the source named
    assert not c.migrate(r.seq, 0, 0, "balance")  # nowhere to go
    assert not c.migrate(pinned.seq, 0, 1, "balance")
    c.instances[2].healthy = False
    assert not c.migrate(r.seq, 0, 2, "balance")  # the destination is out of service
    assert c.migrate(r.seq, 0, 1, "cascade")
    assert r.move is not None and (r.move.dst, r.move.reason, r.move.ordered_s) == (
        1,
        "cascade",
        5.0,
    )
    assert cuts == [1]  # cut at once: the last token ended a character
    assert not c.migrate(r.seq, 0, 1, "cascade")  # already moving
    assert c.refused_moves == {"balance": 4, "cascade": 1}


def test_a_cut_waits_while_the_last_token_ended_inside_a_character() -> None:
    c = cluster()
    r = live(1, 10)
    c.admit(r, 0)
    cuts: list[int] = []
    r.interrupt = lambda: cuts.append(1)
    r.hold_cut = True
    assert c.migrate(r.seq, 0, 1, "balance") and cuts == []


def test_detach_and_admit_move_the_request_between_books() -> None:
    c = cluster()
    r = live(1, 10)
    c.admit(r, 0)
    c.started(r, 0.0)
    r.seq.generated_tokens = 3
    c.detach(r)
    assert r.seq.state is SeqState.DETACHED and c.instances[0].in_flight == 0
    c.admit(r, 1)
    assert r.seq.instances == [0, 1] and r.seq.state is SeqState.WAITING
    assert c.instance(1).pending_prefill() == (13, 84.5)  # prompt + generated re-prefilled
