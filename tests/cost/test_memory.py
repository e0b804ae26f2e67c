"""hwsim.cost.memory against plain-Python ports of SCALE-Sim 3.0.0's own code.

The references below transcribe, statement by statement, what scalesim does (file / function
named on each): the demand matrices of ``compute/systolic_compute_{os,ws,is}.py``
(``create_*_demand_mat``, fold loops, padding, ``np.flip``, ``skew_matrix``), the CALC-mode
read buffer ``memory/read_buffer_estimate_bw.py`` (its 100 sets, ``manage_prefetches``,
``check_hit``, ``complete_all_prefetches``) and the write buffer ``memory/write_buffer.py``
(``service_writes``, ``empty_drain_buf``, ``empty_all_buffers``) driven as
``double_buffered_scratchpad.service_memory_requests`` drives it. They are slow and literal;
hwsim's closed forms and vectorised walks must equal them exactly. ``test_scalesim.py`` checks
both against the real simulator on fixed cases; here hypothesis explores shapes, arrays and
SRAM sizes (in bytes, so that epochs of a few words occur) far more widely.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hwsim.cost.memory import (
    ConvGeometry,
    distinct_misses,
    dram_reads,
    epoch_words,
    memory_cost,
    ofmap_writes,
)
from hwsim.cost.user_mode import memory_cost_user

# --- scalesim's demand matrices (compute/systolic_compute_*.py), literally -------------------


def _skew(m):  # systolic_compute_*.skew_matrix
    rows, cols = m.shape
    out = np.full((rows + cols - 1, cols), -1, dtype=m.dtype)
    for c in range(cols):
        out[c : c + rows, c] = m[:, c]
    return out


def _padc(m, width):
    return np.concatenate([m, -np.ones((m.shape[0], width - m.shape[1]), int)], axis=1)


def _padr(m, height):
    return np.concatenate([m, -np.ones((height - m.shape[0], m.shape[1]), int)], axis=0)


def _null(n, width):
    return -np.ones((n, width), int)


def operand_matrices(Np, K, Mf, geo):
    """compute/operand_matrix.py: ifmap (Np x K), filter (K x Mf), ofmap (Np x Mf) addresses
    (offsets left out: each operand has its own buffer)."""
    p, k = np.meshgrid(np.arange(Np), np.arange(K), indexing="ij")
    ifmap = p * K + k if geo is None else geo.ifmap_addr(p, k)
    kk, m = np.meshgrid(np.arange(K), np.arange(Mf), indexing="ij")
    filt = m * K + kk
    pp, mm = np.meshgrid(np.arange(Np), np.arange(Mf), indexing="ij")
    return ifmap, filt, pp * Mf + mm


def demand_matrices(df, R, C, Np, K, Mf, geo=None):
    ifm, flt, ofm = operand_matrices(Np, K, Mf, geo)
    ifd, fld, ofd = [], [], []
    if df == "os":
        T = K
        for fc in range(math.ceil(Mf / C)):
            for fr in range(math.ceil(Np / R)):
                rs, re = fr * R, min(fr * R + R, Np)
                cs, ce = fc * C, min(fc * C + C, Mf)
                d = _padc(ifm.T[:, rs:re], R)
                ifd.append(_skew(np.concatenate([d, _null(C - 1, R)])))
                d = _padc(flt[:, cs:ce], C)
                fld.append(_skew(np.concatenate([d, _null(R - 1, C)])))
                d = np.flip(_padr(_padc(ofm[rs:re, cs:ce], C), R), 0)
                ofd.append(_skew(np.concatenate([_null(T - 1, C), d])))
    elif df == "ws":
        T = Np
        for fc in range(math.ceil(Mf / C)):
            for fr in range(math.ceil(K / R)):
                ks, ke = fr * R, min(fr * R + R, K)
                cs, ce = fc * C, min(fc * C + C, Mf)
                d = _padc(ifm[:, ks:ke], R)
                ifd.append(_skew(np.concatenate([_null(R, R), d, _null(C - 1, R)])))
                d = np.flip(_padr(_padc(flt[ks:ke, cs:ce], C), R), 0)
                fld.append(np.concatenate([d, _null(R + C + T - 2, C)]))
                d = _padc(ofm[:, cs:ce], C)
                ofd.append(_skew(np.concatenate([_null(2 * R - 1, C), d])))
    else:
        T = Mf
        for fc in range(math.ceil(Np / C)):
            for fr in range(math.ceil(K / R)):
                ks, ke = fr * R, min(fr * R + R, K)
                ps, pe = fc * C, min(fc * C + C, Np)
                d = np.flip(_padr(_padc(ifm.T[ks:ke, ps:pe], C), R), 0)
                ifd.append(np.concatenate([d, _null(R + C + T - 2, C)]))
                d = _padc(flt[ks:ke, :].T, R)
                fld.append(_skew(np.concatenate([_null(R, R), d, _null(C - 1, R)])))
                d = _padc(ofm[ps:pe, :].T, C)
                ofd.append(_skew(np.concatenate([_null(2 * R - 1, C), d])))
    ifd, fld, ofd = (np.concatenate(x) for x in (ifd, fld, ofd))
    assert ifd.shape[0] == fld.shape[0] == ofd.shape[0]
    return ifd, fld, ofd


def stream(demand):
    return [int(a) for a in demand.ravel() if a != -1]


# --- memory/read_buffer_estimate_bw.py (CALC mode), literally ---------------------------------


def estimate_bw_reads(addresses, size_bytes):
    """ReadBufferEstimateBw.num_access after service_reads + complete_all_prefetches."""
    per_set = math.floor(size_bytes / 100)
    n_act, n_pre = 50, 50
    sets, cur, n_cur, cur_id = [], set(), 0, 0
    rb_start, rb_end = 0, n_act - 1
    pf_start = pf_end = -1
    active_done, num_access = False, 0

    def hit(a):
        return any(a in sets[i] for i in range(rb_start, min(cur_id, rb_end + 1)))

    for a in addresses:
        if hit(a) or a in cur:
            continue
        cur.add(a)
        n_cur += 1
        if n_cur == per_set:
            sets.append(cur)
            cur, n_cur = set(), 0
            cur_id += 1
            if cur_id == rb_end + 1:
                if not active_done:
                    num_access += sum(len(sets[i]) for i in range(n_act))
                    pf_start, pf_end = rb_end + 1, rb_end + n_pre
                    active_done = True
                else:
                    num_access += sum(len(sets[i]) for i in range(pf_start, pf_end + 1))
                    pf_start += n_pre
                    pf_end += n_pre
                rb_start += n_pre
                rb_end += n_pre
    if cur:
        sets.append(cur)
    else:
        cur_id -= 1
    first = 0 if not active_done else pf_start
    num_access += sum(len(sets[i]) for i in range(first, cur_id + 1))
    return num_access


# --- memory/write_buffer.py, driven by service_memory_requests, literally ---------------------


class WriteBuffer:
    """write_buffer: set_params, service_writes (one demand row a call), empty_all_buffers."""

    def __init__(self, size_bytes, bw):
        self.T = math.floor(size_bytes)
        self.drain = self.T - math.ceil(self.T * 0.5)
        self.bw = bw
        self.free, self.drain_end, self.start, self.acc, self.stop = self.T, 0, 0, 0, 0
        self.lines, self.cur = [], 0

    def empty_drain_buf(self, cycle):
        nl = math.ceil(self.drain / self.bw)
        end = min(self.start + nl, len(self.lines))
        n = end - self.start
        data = n * self.bw - (self.bw - self.lines[end - 1])  # "Adjust for -1": last line
        self.acc += data
        self.free += data
        self.start = end
        self.stop = max(self.stop, cycle + n - 1)
        return cycle + n - 1

    def service_writes(self, row, cycle):
        cc = cycle
        for a in row:
            if a == -1:
                continue
            self.cur += 1
            self.free -= 1
            if self.cur == self.bw:
                self.lines.append(self.bw)
                self.cur = 0
            if cc < self.drain_end:
                if not self.free > 0:
                    cc = self.drain_end
            elif self.free < self.T - self.drain:
                if self.cur:  # append_to_trace_mat(force=True): the open line, padded
                    self.lines.append(self.cur)
                    self.cur = 0
                self.drain_end = self.empty_drain_buf(cc)
        return cc

    def empty_all_buffers(self, cycle):
        if self.cur:
            self.lines.append(self.cur)
            self.cur = 0
        while self.start < len(self.lines):
            cycle = self.empty_drain_buf(cycle) + 1


def write_buffer(ofmap_demand, size_bytes, bw):
    """(num_access, stall cycles, total cycles, last DRAM write cycle) of the ofmap buffer,
    driven as service_memory_requests drives it in CALC mode (reads never stall)."""
    wb = WriteBuffer(size_bytes, bw)
    stalls, served = 0, []
    for i, row in enumerate(ofmap_demand):
        cycle = i + stalls
        out = wb.service_writes(row, cycle)
        served.append(out)
        stalls += int(max(0, out - cycle))
    wb.empty_all_buffers(served[-1])
    return wb.acc, stalls, max(served), wb.stop


# --- USER mode: prefetch matrices (create_*_prefetch_mat), memory/read_buffer.py -------------


def _rollout(m):  # the "Fixing ISSUE #15, #16" diagonal loop of create_*_prefetch_mat
    M, N = m.shape
    out = []
    for diag_id in range(M + N):
        max_row_id = min(diag_id, M - 1)
        min_row_id = max(0, diag_id - N + 1)
        for offset in range(max_row_id - min_row_id + 1):
            row_id = max_row_id - offset
            out.append(m[row_id][diag_id - row_id])
    return np.asarray(out).reshape(1, -1)


def prefetch_matrices(df, R, C, Np, K, Mf, geo=None):
    ifm, flt, _ = operand_matrices(Np, K, Mf, geo)
    if df == "os":
        fi = np.concatenate([_padc(ifm.T[:, r : r + R], R) for r in range(0, Np, R)])
        ff = np.concatenate([_padc(flt[:, c : c + C], C) for c in range(0, Mf, C)])
        return _rollout(fi), _rollout(ff)
    if df == "ws":
        fi = np.concatenate([_padc(ifm[:, k : k + R], R) for k in range(0, K, R)])
        ff = np.concatenate([_padc(flt[:, c : c + C], C) for c in range(0, Mf, C)])
        return _rollout(fi), ff
    fi = np.concatenate([_padc(ifm.T[:, p : p + C], C) for p in range(0, Np, C)])
    ff = np.concatenate([_padc(flt[k : k + R, :].T, R) for k in range(0, K, R)])
    return fi, _rollout(ff)


class ReadBuffer:
    """read_buffer (no custom layout, no ramulator): set_fetch_matrix, prepare_hashed_buffer,
    service_reads, prefetch_active_buffer, new_prefetch, active_buffer_hit."""

    def __init__(self, prefetch, size_bytes, bw):
        total = math.floor(size_bytes)
        self.active = math.ceil(total * 0.5)
        self.pre = total - self.active
        self.bw = bw
        flat = prefetch.ravel()
        self.fetch_rows = math.ceil(len(flat) / bw)
        eps = math.ceil(total / 100)
        sets, cur, ctr = [], set(), 0
        for e in list(flat) + [-1] * (self.fetch_rows * bw - len(flat)):
            if e != -1:
                cur.add(e)
                ctr += 1
            if not ctr < eps:
                sets.append(cur)
                cur, ctr = set(), 0
        sets.append(cur)
        self.sets, self.n = sets, len(sets)
        self.n_act = min(math.ceil(self.active / eps), self.n)
        self.n_pre = min(math.ceil(self.pre / eps), self.n - self.n_act)
        self.full, self.num_access, self.last = False, 0, 0
        self.first_response = None

    def hit(self, a):
        s, e = self.limits
        ids = range(s, e) if s < e else list(range(s, self.n)) + list(range(e))
        return any(a in self.sets[i] for i in ids)

    def prefetch_active_buffer(self, start):
        nl = math.ceil(self.active / self.bw)
        if not nl < self.fetch_rows:
            nl = self.fetch_rows
        self.num_access += nl * self.bw
        responses = [-1 * (nl - start - (i - 1)) + 1 for i in range(nl)]  # + read_port latency
        self.last = max(responses)
        self.first_response = min(responses)
        self.limits = [0, self.n_act]
        self.full = True

    def new_prefetch(self):
        s = (self.limits[0] + self.n_pre) % self.n
        self.limits = [s, (s + self.n_act) % self.n]
        nl = math.ceil(self.pre / self.bw)
        self.num_access += nl * self.bw
        self.last = max(self.last + i + 1 + 1 for i in range(nl))

    def service_reads(self, row, cycle):
        if not self.full:
            self.prefetch_active_buffer(cycle)
        offset = 1
        for a in row:
            if a == -1:
                continue
            while not self.hit(a):
                self.new_prefetch()
                potential = self.last - (cycle + offset)
                offset += potential
                if potential > 0:
                    offset += potential
        return cycle + offset


def user_mode(df, R, C, Np, K, Mf, geo, size_bytes, bw):
    """double_buffered_scratchpad.service_memory_requests with USER-mode read buffers:
    (ifmap, filter, ofmap DRAM words, stalls, total cycles, total cycles incl. prefetch)."""
    I_, F_, O_ = demand_matrices(df, R, C, Np, K, Mf, geo)
    pi, pf = prefetch_matrices(df, R, C, Np, K, Mf, geo)
    ri, rf = ReadBuffer(pi, size_bytes, bw), ReadBuffer(pf, size_bytes, bw)
    wb = WriteBuffer(size_bytes, bw)
    stalls, served = 0, []
    for i in range(O_.shape[0]):
        cycle = i + stalls
        si = ri.service_reads(I_[i], cycle) - cycle - 1
        sf = rf.service_reads(F_[i], cycle) - cycle - 1
        out = wb.service_writes(O_[i], cycle)
        served.append(out)
        stalls += int(max(si, sf, out - cycle))
    wb.empty_all_buffers(served[-1])
    start = min(ri.first_response, rf.first_response)
    return ri.num_access, rf.num_access, wb.acc, stalls, max(served), wb.stop - start


# --- the tests ------------------------------------------------------------------------------

DF = st.sampled_from(["os", "ws", "is"])


@st.composite
def convs(draw):
    fh, fw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    s = draw(st.integers(1, 3))
    ih, iw = draw(st.integers(fh, fh + 7)), draw(st.integers(fw, fw + 7))
    return ConvGeometry(ih, iw, fh, fw, draw(st.integers(1, 4)), s)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(
    df=DF,
    R=st.integers(1, 9),
    C=st.integers(1, 9),
    geo=convs(),
    Mf=st.integers(1, 11),
    size=st.integers(100, 1500),
    trim=st.booleans(),
)
def test_reads_equal_scalesim_read_buffer_on_convs(df, R, C, geo, Mf, size, trim):
    if trim:  # windows beyond the ifmap (-1 addresses) or not
        geo = ConvGeometry(
            (geo.oh - 1) * geo.stride + geo.fh,
            (geo.ow - 1) * geo.stride + geo.fw,
            geo.fh,
            geo.fw,
            geo.ch,
            geo.stride,
        )
    Np, K = geo.oh * geo.ow, geo.fh * geo.fw * geo.ch
    ifd, fld, _ = demand_matrices(df, R, C, Np, K, Mf, geo)
    kb = size / 1024
    want = (estimate_bw_reads(stream(ifd), size), estimate_bw_reads(stream(fld), size))
    assert dram_reads(df, R, C, Np, K, Mf, kb, kb, geo) == want


@settings(max_examples=150, deadline=None, derandomize=True)
@given(
    df=DF,
    R=st.integers(1, 9),
    C=st.integers(1, 9),
    Np=st.integers(1, 40),
    K=st.integers(1, 40),
    Mf=st.integers(1, 30),
    size=st.integers(100, 1500),
)
def test_reads_equal_scalesim_read_buffer_on_gemms(df, R, C, Np, K, Mf, size):
    ifd, fld, _ = demand_matrices(df, R, C, Np, K, Mf)
    kb = size / 1024
    want = (estimate_bw_reads(stream(ifd), size), estimate_bw_reads(stream(fld), size))
    assert dram_reads(df, R, C, Np, K, Mf, kb, kb) == want


@settings(max_examples=150, deadline=None, derandomize=True)
@given(
    df=DF,
    R=st.integers(1, 9),
    C=st.integers(1, 9),
    Np=st.integers(1, 60),
    K=st.integers(1, 30),
    Mf=st.integers(1, 30),
    size=st.integers(2, 600),
    line=st.integers(1, 12),
)
def test_ofmap_writes_equal_scalesim_write_buffer(df, R, C, Np, K, Mf, size, line):
    _, _, ofd = demand_matrices(df, R, C, Np, K, Mf)
    acc, stalls, last, stop = write_buffer(ofd, size, line)
    wb = ofmap_writes(df, R, C, Np, K, Mf, size / 1024, line)
    assert (wb.dram_writes, wb.stall_cycles, wb.last_cycle, wb.drain_stop) == (
        acc,
        stalls,
        last,
        stop,
    )


def epoch_rule(addresses, E):
    """Eq. M2 as a plain loop: a word is fetched unless requested since the epoch began; an
    epoch ends after E fetches."""
    seen, n, total = set(), 0, 0
    for a in addresses:
        if a in seen:
            continue
        seen.add(a)
        n += 1
        total += 1
        if n == E:
            seen, n = set(), 0
    return total


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    n=st.integers(0, 60),
    reps=st.integers(0, 6),
    cnt=st.integers(0, 40),
    E=st.integers(1, 50),
)
def test_distinct_misses_is_the_epoch_rule(n, reps, cnt, E):
    cnt = cnt % E
    # cnt fetches of other words already in the epoch, then reps passes over n new words
    pre = [-(i + 1) for i in range(cnt)]
    body = list(range(n)) * reps
    got, after = distinct_misses(n, reps, cnt, E)
    assert got == epoch_rule(pre + body, E) - cnt
    # the epoch's fill after: as the plain loop leaves it
    seen, k = set(), 0
    for a in pre + body:
        if a not in seen:
            seen.add(a)
            k += 1
            if k == E:
                seen, k = set(), 0
    assert after == k


@settings(max_examples=200, deadline=None, derandomize=True)
@given(size=st.integers(100, 5000))
def test_epoch_rule_is_scalesims_set_bookkeeping(size):
    """Eq. M1-M2 against the port of read_buffer_estimate_bw on a stream with reuse."""
    rng = np.random.default_rng(size)
    addrs = [int(a) for a in rng.integers(0, 3 * size, 4 * size)]
    assert estimate_bw_reads(addrs, size) == epoch_rule(addrs, 50 * (size // 100))
    assert epoch_words(size / 1024) == 50 * (size // 100)


def test_memory_cost_of_a_layer_that_fits():
    """SRAMs that hold the layer: each distinct word once, the ofmap once (OS)."""
    geo = ConvGeometry(10, 10, 3, 3, 8, 1)
    m = memory_cost("os", 8, 8, 64, 72, 12, (64, 64, 64), geo)
    assert (m.dram_ifmap_reads, m.dram_filter_reads, m.dram_ofmap_writes) == (800, 864, 768)
    assert m.stall_cycles == 0


@pytest.mark.parametrize("df", ["os", "ws", "is"])
def test_batch_samples_have_their_own_ifmaps(df):
    geo = ConvGeometry(6, 6, 3, 3, 2, 1)
    one = geo.oh * geo.ow
    i1, _ = dram_reads(df, 4, 4, one, 18, 3, 64, 64, geo)
    i2, _ = dram_reads(df, 4, 4, 2 * one, 18, 3, 64, 64, geo)
    assert (i1, i2) == (72, 144)


@pytest.mark.parametrize("df", ["os", "ws", "is"])
def test_without_scalesim_padding_ofmap_words_are_the_demand(df):
    """scalesim_padding=False: the DRAM ofmap words are exactly the words the array writes
    (Np * Mf, times the K folds in ws / is), whatever the buffer and line sizes."""
    for size, line in ((300, 7), (1000, 16), (64 * 1024, 32)):
        for Np, K, Mf in ((58, 30, 21), (100, 70, 30), (7, 3, 40)):
            wb = ofmap_writes(df, 8, 8, Np, K, Mf, size / 1024, line, scalesim_padding=False)
            folds = 1 if df == "os" else math.ceil(K / 8)
            assert wb.dram_writes == Np * Mf * folds


@settings(max_examples=120, deadline=None, derandomize=True)
@given(
    df=DF,
    R=st.integers(1, 7),
    C=st.integers(1, 7),
    conv=st.one_of(st.none(), convs()),
    Np=st.integers(1, 30),
    K=st.integers(1, 30),
    Mf=st.integers(1, 20),
    size=st.integers(100, 1200),
    bw=st.integers(1, 16),
)
def test_user_mode_equals_scalesim_read_and_write_buffers(df, R, C, conv, Np, K, Mf, size, bw):
    """USER bandwidth mode: DRAM words, stalls and cycles of hwsim.cost.user_mode equal the
    port of scalesim's read_buffer / write_buffer / service_memory_requests."""
    if conv is not None:
        Np, K = conv.oh * conv.ow, conv.fh * conv.fw * conv.ch
    want = user_mode(df, R, C, Np, K, Mf, conv, size, bw)
    kb = size / 1024
    m = memory_cost_user(df, R, C, Np, K, Mf, (kb, kb, kb), bw, conv)
    got = (
        m.dram_ifmap_reads,
        m.dram_filter_reads,
        m.dram_ofmap_writes,
        m.stall_cycles,
        m.total_cycles,
        m.total_cycles_incl_prefetch,
    )
    assert got == want


def test_sram_of_fewer_than_100_words_is_an_error():
    from hwsim.cost.config import ConfigError

    with pytest.raises(ConfigError, match="filter SRAM holds 51 operand words"):
        memory_cost("os", 4, 4, 10, 10, 10, (1, 0.05, 1))
    with pytest.raises(ConfigError, match="ofmap SRAM holds 10 operand words"):
        memory_cost_user("os", 4, 4, 10, 10, 10, (1, 1, 0.01), 4)
