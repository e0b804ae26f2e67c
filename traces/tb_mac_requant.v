// A MAC / accumulator / requantization pipeline for one dense layer of an hwsim trace
// (docs/trace.md), checked against the golden vectors, under Icarus Verilog:
//
//   iverilog -g2012 -o tb.vvp -P tb_mac_requant.XBITS=8 -P tb_mac_requant.OBITS=8 \
//       traces/tb_mac_requant.v
//   cd traces/rescnn-tflite && vvp ../../tb.vvp +x=t_8_Flatten_output_0.hex \
//       +w=L011_9_Gemm.weights.hex +b=L011_9_Gemm.bias.hex +acc=L011_9_Gemm.acc.hex \
//       +m=L011_9_Gemm.register.multiplier.hex +s=L011_9_Gemm.register.shift.hex \
//       +y=t_logits.hex +K=32 +O=10 +NREG=1 +xzp=0 +wzp=0 +yzp=0 +xsigned=0 +osigned=1
//
// (tests/test_trace_verilog.py builds these arguments from manifest.json)
//
// Per output channel o (one sample): acc = sum_k (x[k] - xzp) * (w[o*K + k] - wzp) in a 32-bit
// wrapping accumulator, checked against the trace's raw accumulator; t = wrap32(acc + bias[o]);
// the TFLite register (default "double" rounding, gemmlowp):
//   y = RoundingDivideByPOT(SaturatingRoundingDoublingHighMul(wrap32(t << max(s,0)), m),
//                           max(-s,0))
// then out = saturate(y + yzp) to OBITS (signed or not), checked against the golden output.
// Every hex file is the trace's $readmemh text: row-major of the stored shape, one word per
// line, two's complement (or unsigned) at the declared width. Prints PASS, or FAIL with the
// first mismatch and exits non-zero ($fatal).
`timescale 1ns / 1ps
module tb_mac_requant;
  parameter integer XBITS = 8;   // input width
  parameter integer WBITS = 8;   // weight width (signed)
  parameter integer OBITS = 8;   // output width
  parameter integer MAXN = 65536;

  reg [XBITS-1:0] xmem [0:MAXN-1];
  reg [WBITS-1:0] wmem [0:MAXN-1];
  reg [31:0] bmem [0:MAXN-1];
  reg [31:0] amem [0:MAXN-1];
  reg [31:0] mmem [0:MAXN-1];
  reg [7:0] smem [0:MAXN-1];
  reg [OBITS-1:0] ymem [0:MAXN-1];

  reg [1023:0] fx, fw, fb, fa, fm, fs, fy;
  integer K, O, NREG, xzp, wzp, yzp, xsigned, osigned;
  integer o, k, errors, first_bad;
  reg signed [31:0] acc, t, mult, y32, srdhm, xs;
  reg signed [63:0] xv, wv, ab, nudge, q, yfull, lo, hi, remainder, threshold, mask;
  integer shift, left, right;

  function automatic signed [63:0] sx_ext(input [63:0] v, input integer bits, input integer sgn);
    begin
      if (sgn != 0 && v[bits-1]) sx_ext = v | (~64'd0 << bits);
      else sx_ext = v & ~(~64'd0 << bits);
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
    need("x", $value$plusargs("x=%s", fx));
    need("w", $value$plusargs("w=%s", fw));
    need("b", $value$plusargs("b=%s", fb));
    need("acc", $value$plusargs("acc=%s", fa));
    need("m", $value$plusargs("m=%s", fm));
    need("s", $value$plusargs("s=%s", fs));
    need("y", $value$plusargs("y=%s", fy));
    need("K", $value$plusargs("K=%d", K));
    need("O", $value$plusargs("O=%d", O));
    need("NREG", $value$plusargs("NREG=%d", NREG));
    need("xzp", $value$plusargs("xzp=%d", xzp));
    need("wzp", $value$plusargs("wzp=%d", wzp));
    need("yzp", $value$plusargs("yzp=%d", yzp));
    need("xsigned", $value$plusargs("xsigned=%d", xsigned));
    need("osigned", $value$plusargs("osigned=%d", osigned));
    $readmemh(fx, xmem, 0, K - 1);
    $readmemh(fw, wmem, 0, O * K - 1);
    $readmemh(fb, bmem, 0, O - 1);
    $readmemh(fa, amem, 0, O - 1);
    $readmemh(fm, mmem, 0, NREG - 1);
    $readmemh(fs, smem, 0, NREG - 1);
    $readmemh(fy, ymem, 0, O - 1);
    if (osigned != 0) begin
      lo = -(64'sd1 <<< (OBITS - 1));
      hi = (64'sd1 <<< (OBITS - 1)) - 1;
    end else begin
      lo = 0;
      hi = (64'sd1 <<< OBITS) - 1;
    end
    errors = 0;
    first_bad = -1;
    for (o = 0; o < O; o = o + 1) begin
      // MAC: a 32-bit wrapping accumulator
      acc = 0;
      for (k = 0; k < K; k = k + 1) begin
        xv = sx_ext(xmem[k], XBITS, xsigned) - xzp;
        wv = sx_ext(wmem[o * K + k], WBITS, 1) - wzp;
        acc = acc + xv * wv;
      end
      if (acc !== $signed(amem[o])) begin
        if (first_bad < 0) $display("acc[%0d]: got %0d, golden %0d", o, acc, $signed(amem[o]));
        errors = errors + 1;
        if (first_bad < 0) first_bad = o;
      end
      t = acc + $signed(bmem[o]);
      // the TFLite register
      mult = $signed(mmem[(NREG > 1) ? o : 0]);
      shift = $signed(smem[(NREG > 1) ? o : 0]);
      left = (shift > 0) ? shift : 0;
      right = (shift > 0) ? 0 : -shift;
      xs = t <<< left;  // wraps to 32 bits, as TFLite's x * (1 << s)
      if (xs == 32'sh80000000 && mult == 32'sh80000000) srdhm = 32'sh7fffffff;
      else begin
        ab = xs * mult;
        nudge = (ab >= 0) ? (64'sd1 <<< 30) : (64'sd1 - (64'sd1 <<< 30));
        q = (ab + nudge) / 64'sd2147483648;  // truncates toward zero, as C's int64 division
        srdhm = q[31:0];
      end
      mask = (64'sd1 <<< right) - 1;
      remainder = srdhm & mask;
      threshold = (mask >>> 1) + ((srdhm < 0) ? 1 : 0);
      y32 = (srdhm >>> right) + ((remainder > threshold) ? 1 : 0);
      yfull = y32 + yzp;
      if (yfull < lo) yfull = lo;
      if (yfull > hi) yfull = hi;
      if (yfull !== sx_ext(ymem[o], OBITS, osigned)) begin
        if (errors == 0 || first_bad != o)
          $display("out[%0d]: got %0d, golden %0d", o, yfull, sx_ext(ymem[o], OBITS, osigned));
        errors = errors + 1;
        if (first_bad < 0) first_bad = o;
      end
    end
    if (errors == 0) $display("PASS: %0d outputs of a %0d-deep dense layer", O, K);
    else begin
      $display("FAIL: %0d mismatches, first at output channel %0d", errors, first_bad);
      $fatal(1);
    end
    $finish;
  end
endmodule
