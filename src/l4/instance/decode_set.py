"""The decoding sequences of one instance, advanced lazily.

Every decoding sequence computes exactly one token per step, so with a global step counter `D`
each one is described by a constant offset: computed tokens = off + D. Aggregates over the set
(count, context sum, context max, KV blocks held, blocks needed by the next steps, the next
finishing step) are then O(1) or O(block size) per query instead of O(sequences) per step, which
is what lets the simulator advance many steps in closed form.

Guarantees: `blocks_at(D)` equals the sum over members of ceil((off + D) / block_size), the blocks
vLLM would hold for their computed tokens; `materialise` writes the exact counters back.
"""

from __future__ import annotations

import heapq

from l4.instance.sequence import SeqState, Sequence


class DecodeSet:
    __slots__ = (
        "_bs",
        "_finish_heap",
        "_max_heap",
        "_members",
        "_residue",
        "_sum_q",
        "sum_off",
    )

    def __init__(self, block_size_tokens: int) -> None:
        self._bs = block_size_tokens
        self._members: dict[int, Sequence] = {}
        self.sum_off = 0
        self._residue = [0] * block_size_tokens  # members by off mod block size
        self._sum_q = 0  # sum of off // block size
        # Lazy-deletion heaps, entries validated by the sequence's epoch.
        self._max_heap: list[tuple[int, int, int, Sequence]] = []
        self._finish_heap: list[tuple[int, int, int, Sequence]] = []

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, seq: Sequence) -> bool:
        return self._members.get(seq.request_id) is seq

    def members(self) -> list[Sequence]:
        return list(self._members.values())

    def add(self, seq: Sequence, step: int) -> None:
        """`seq` (counters materialised, computed tokens in KV) starts decoding at step `step`."""
        seq.epoch += 1
        seq.state = SeqState.DECODE
        seq.base_step = step
        seq.base_generated = seq.generated_tokens
        off = seq.computed_tokens - step
        seq.decode_off = off
        self._members[seq.request_id] = seq
        self.sum_off += off
        q, r = divmod(off, self._bs)
        self._residue[r] += 1
        self._sum_q += q
        heapq.heappush(self._max_heap, (-off, seq.order, seq.epoch, seq))
        finish_step = step + seq.spec.output_tokens - seq.generated_tokens
        heapq.heappush(self._finish_heap, (finish_step, seq.order, seq.epoch, seq))

    def materialise(self, seq: Sequence, step: int) -> None:
        """Write the exact counters of a member at step `step` into the sequence."""
        advanced = step - seq.base_step
        seq.generated_tokens = seq.base_generated + advanced
        seq.computed_tokens = seq.decode_off + step
        seq.blocks = -(-seq.computed_tokens // self._bs)

    def remove(self, seq: Sequence, step: int) -> None:
        """Take `seq` out at step `step`; its counters and blocks are materialised first."""
        self.materialise(seq, step)
        off = seq.decode_off
        del self._members[seq.request_id]
        self.sum_off -= off
        q, r = divmod(off, self._bs)
        self._residue[r] -= 1
        self._sum_q -= q
        seq.epoch += 1  # invalidates its heap entries

    # ---- aggregates -------------------------------------------------------------------------
    def length_sum(self, step: int) -> int:
        """Sum of context lengths attended in step `step` (computed + the new token)."""
        return self.sum_off + len(self._members) * (step + 1)

    def length_max(self, step: int) -> int:
        heap = self._max_heap
        while heap and heap[0][2] != heap[0][3].epoch:
            heapq.heappop(heap)
        return (-heap[0][0] + step + 1) if heap else 0

    def next_finish_step(self) -> int | None:
        """The step count after which the earliest member emits its last token."""
        heap = self._finish_heap
        while heap and heap[0][2] != heap[0][3].epoch:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def pop_finished(self, step: int) -> list[Sequence]:
        """Members whose last token was produced by the step that brought the counter to `step`."""
        out: list[Sequence] = []
        heap = self._finish_heap
        while heap:
            finish_step, _, epoch, seq = heap[0]
            if epoch != seq.epoch:
                heapq.heappop(heap)
                continue
            if finish_step > step:
                break
            heapq.heappop(heap)
            self.remove(seq, step)
            out.append(seq)
        return out

    def blocks_at(self, step: int) -> int:
        bs = self._bs
        total = self._sum_q
        for r, count in enumerate(self._residue):
            if count:
                total += count * ((r + step + bs - 1) // bs)
        return total

    def new_blocks_for_step(self, step: int) -> int:
        """Blocks the members must allocate to run step `step` (those whose KV fills a block)."""
        return self._residue[(-step) % self._bs]

    def max_steps_within(self, step: int, free_blocks: int) -> int:
        """Largest k such that steps step..step+k-1 need at most `free_blocks` new blocks."""
        n = len(self._members)
        if n == 0:
            return 1 << 62
        bs = self._bs
        cycles, left = divmod(free_blocks, n)
        k = cycles * bs
        # Each full cycle of `bs` steps costs exactly n blocks; walk the last partial cycle.
        for _ in range(bs):
            need = self._residue[(-(step + k)) % bs]
            if need > left:
                break
            left -= need
            k += 1
        return k
