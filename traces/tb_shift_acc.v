// The per-sample-shift accumulator (docs/numerics.md eq. 13-14; the FQT paper's proposed
// hardware) for the `shift_acc` entry of an hwsim trace (docs/trace.md): a MatMul a @ b whose
// summed axis K holds tokens, each on its own grid (per-token shifts), checked against the
// golden final accumulators, under Icarus Verilog:
//
//   iverilog -g2012 -o tb_shift_acc.vvp traces/tb_shift_acc.v
//   cd traces/vit-token-shift && vvp ../../tb_shift_acc.vvp \
//       +a=t_blocks_blocks_1_attn_Softmax_output_0.hex \
//       +b=t_blocks_blocks_1_attn_Transpose_1_output_0.hex \
//       +sh=L041_blocks_blocks_1_attn_MatMul_1.group_shifts.hex \
//       +acc=L041_blocks_blocks_1_attn_MatMul_1.acc.hex +G=4 +M=17 +K=17 +N=8 \
//       +abits=8 +asigned=0 +azp=0 +bbits=8 +bsigned=1 +bzp=0 \
//       +accbits=32 +accsigned=1 +sat=0 +rnd=5
//
// (tests/test_trace_verilog.py builds these arguments from manifest.json)
//
// Per matrix g, output (m, n), for k = 0..K-1 (token order), one product per group:
//   group accumulator   P = ovf((a[g,m,k] - azp) * (b[g,k,n] - bzp))
//   shift               R = round_shift(P, sh[g,k], rnd)       (sh in [0, S_max])
//   final accumulator   F = ovf(F + R)                         (F starts at 0)
// ovf: +sat=0 wraps to accbits (two's complement, or mod 2^accbits unsigned), +sat=1 clamps
// to the accumulator's range after each addition. F is checked against acc[g,m,n].
// round_shift(x, s): q = x >>> s (floor), r = x - q * 2^s, half = 2^(s-1); q + 1 where
//   +rnd=0 floor: never; 1 ceil: r != 0; 2 toward_zero: r != 0 and x < 0;
//   3 half_up: r >= half; 4 half_down: r > half; 5 half_away: r > half or (r == half and
//   x > 0); 6 half_even: r > half or (r == half and q odd)   (modes 3-6 only for s > 0).
// Memories are 64 bits wide: every hex word (the trace's $readmemh text, row-major of the
// stored shape) is read zero-extended and sign-extended here from its declared width.
// Prints PASS, or FAIL with the first mismatch and exits non-zero ($fatal).
`timescale 1ns / 1ps
module tb_shift_acc;
  parameter integer MAXN = 65536;

  reg [63:0] amem [0:MAXN-1];
  reg [63:0] bmem [0:MAXN-1];
  reg [63:0] smem [0:MAXN-1];
  reg [63:0] fmem [0:MAXN-1];

  reg [1023:0] fa, fb, fs, fc;
  integer G, M, K, N, abits, asigned, azp, bbits, bsigned, bzp, accbits, accsigned, sat, rnd;
  integer g, m, n, k, s, errors, shifted, first_g, first_m, first_n, events;
  reg signed [63:0] p, r, f, want, lo, hi, got_first, want_first;

  function automatic signed [63:0] sx_ext(input [63:0] v, input integer bits, input integer sgn);
    begin
      if (sgn != 0 && v[bits-1]) sx_ext = v | (~64'd0 << bits);
      else sx_ext = v & ~(~64'd0 << bits);
    end
  endfunction

  // the accumulator's overflow rule on an exact value v (|v| < 2^62)
  function automatic signed [63:0] ovf(input signed [63:0] v);
    begin
      if (sat != 0) ovf = (v < lo) ? lo : ((v > hi) ? hi : v);
      else ovf = sx_ext(v, accbits, accsigned);
    end
  endfunction

  function automatic signed [63:0] round_shift(input signed [63:0] x, input integer sh,
                                               input integer mode);
    reg signed [63:0] q, rem, half;
    reg up;
    begin
      q = x >>> sh;
      rem = x - (q <<< sh);
      half = (sh > 0) ? (64'sd1 <<< (sh - 1)) : 64'sd1;
      case (mode)
        0: up = 0;
        1: up = (rem != 0);
        2: up = (rem != 0) && (x < 0);
        3: up = (sh > 0) && (rem >= half);
        4: up = (sh > 0) && (rem > half);
        5: up = (sh > 0) && ((rem > half) || ((rem == half) && (x > 0)));
        6: up = (sh > 0) && ((rem > half) || ((rem == half) && q[0]));
        default: up = 0;
      endcase
      round_shift = q + (up ? 64'sd1 : 64'sd0);
    end
  endfunction

  task automatic need(input [8*16-1:0] name, input integer ok);
    begin
      if (!ok) begin
        $display("FAIL: missing plusarg +%0s=", name);
        $fatal(1);
      end
    end
  endtask

  initial begin
    need("a", $value$plusargs("a=%s", fa));
    need("b", $value$plusargs("b=%s", fb));
    need("sh", $value$plusargs("sh=%s", fs));
    need("acc", $value$plusargs("acc=%s", fc));
    need("G", $value$plusargs("G=%d", G));
    need("M", $value$plusargs("M=%d", M));
    need("K", $value$plusargs("K=%d", K));
    need("N", $value$plusargs("N=%d", N));
    need("abits", $value$plusargs("abits=%d", abits));
    need("asigned", $value$plusargs("asigned=%d", asigned));
    need("azp", $value$plusargs("azp=%d", azp));
    need("bbits", $value$plusargs("bbits=%d", bbits));
    need("bsigned", $value$plusargs("bsigned=%d", bsigned));
    need("bzp", $value$plusargs("bzp=%d", bzp));
    need("accbits", $value$plusargs("accbits=%d", accbits));
    need("accsigned", $value$plusargs("accsigned=%d", accsigned));
    need("sat", $value$plusargs("sat=%d", sat));
    need("rnd", $value$plusargs("rnd=%d", rnd));
    if (G * M * K > MAXN || G * K * N > MAXN || G * M * N > MAXN || accbits > 62
        || rnd < 0 || rnd > 6) begin
      $display("FAIL: sizes above MAXN=%0d, accbits above 62 or rnd outside 0..6", MAXN);
      $fatal(1);
    end
    $readmemh(fa, amem, 0, G * M * K - 1);
    $readmemh(fb, bmem, 0, G * K * N - 1);
    $readmemh(fs, smem, 0, G * K - 1);
    $readmemh(fc, fmem, 0, G * M * N - 1);
    if (accsigned != 0) begin
      lo = -(64'sd1 <<< (accbits - 1));
      hi = (64'sd1 <<< (accbits - 1)) - 1;
    end else begin
      lo = 0;
      hi = (64'sd1 <<< accbits) - 1;
    end
    errors = 0;
    shifted = 0;
    events = 0;
    for (g = 0; g < G; g = g + 1)
      for (k = 0; k < K; k = k + 1)
        if (sx_ext(smem[g * K + k], 8, 1) != 0) shifted = shifted + 1;
    for (g = 0; g < G; g = g + 1)
      for (m = 0; m < M; m = m + 1)
        for (n = 0; n < N; n = n + 1) begin
          f = 0;
          for (k = 0; k < K; k = k + 1) begin
            p = (sx_ext(amem[(g * M + m) * K + k], abits, asigned) - azp)
                * (sx_ext(bmem[(g * K + k) * N + n], bbits, bsigned) - bzp);
            if (ovf(p) != p) events = events + 1;
            p = ovf(p);  // the group accumulator: one product
            s = sx_ext(smem[g * K + k], 8, 1);
            r = round_shift(p, s, rnd);
            if (ovf(f + r) != f + r) events = events + 1;
            f = ovf(f + r);  // the final accumulator, in token order
          end
          want = sx_ext(fmem[(g * M + m) * N + n], accbits, accsigned);
          if (f !== want) begin
            if (errors == 0) begin
              first_g = g;
              first_m = m;
              first_n = n;
              got_first = f;
              want_first = want;
            end
            errors = errors + 1;
          end
        end
    if (errors == 0)
      $display("PASS: %0d accumulators of %0d x (%0dx%0d)@(%0dx%0d), %0d of %0d groups shifted, %0d overflow events",
               G * M * N, G, M, K, K, N, shifted, G * K, events);
    else begin
      $display("FAIL: %0d of %0d accumulators differ, first acc[%0d][%0d][%0d]: got %0d, golden %0d",
               errors, G * M * N, first_g, first_m, first_n, got_first, want_first);
      $fatal(1);
    end
    $finish;
  end
endmodule
