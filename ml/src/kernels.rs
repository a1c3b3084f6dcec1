//! The steps of the text encoder between its matrix products, written so that the compiler turns
//! each loop into vector instructions: `exp` and `erf` are polynomials of plain arithmetic (no call
//! into `libm` per element), and sums keep sixteen running lanes. Each step runs through `pulp`'s
//! dispatch, which compiles it for AVX-512, for AVX2 with FMA and for the baseline and picks what
//! the CPU has. Accuracy is that of the scalar functions they replace to within a few units in the
//! last place (the tests hold them to it).

/// Lanes of the running sums (one AVX-512 register of `f32`).
const LANES: usize = 16;

/// `e^x`, for `x` in `[-87.3, 88.3]` (clamped there: below it the result is the smallest normal
/// number, not zero). Cody and Waite's reduction `x = n ln 2 + r` with `ln 2` in two parts, then a
/// degree-6 polynomial for `e^r` on `|r| <= ln 2 / 2` (Moshier's Cephes `expf` coefficients), scaled
/// by `2^n` through the exponent bits.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.3, 88.3);
    let n = x.mul_add(std::f32::consts::LOG2_E, 0.5).floor();
    let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, x));
    let mut p = 1.987_569_1e-4_f32;
    p = p.mul_add(r, 1.398_199_9e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 1.666_666_5e-1);
    p = p.mul_add(r, 0.5);
    let y = p.mul_add(r * r, r) + 1.0;
    // 2^n through the exponent bits. `n` is a whole number in [-126, 127] after the clamp; adding
    // 1.5 · 2^23 puts it in the low bits of the sum's mantissa, which stays clear of a float-to-int
    // conversion (whose saturating semantics keep the loop from being vectorised).
    const MAGIC: f32 = 12_582_912.0;
    let exponent = (n + MAGIC).to_bits().wrapping_sub(MAGIC.to_bits()).wrapping_add(127);
    y * f32::from_bits(exponent << 23)
}

/// GELU as BERT defines it, `x Φ(x) = x (1 + erf(x / √2)) / 2`, with `erf` from Abramowitz and
/// Stegun 7.1.26 (absolute error under 1.5e-7). For negative `x` the factor `1 + erf` is the
/// formula's own small tail, so it loses no digits to cancellation.
#[inline(always)]
fn gelu(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [0.254_829_6, -0.284_496_74, 1.421_413_8, -1.453_152, 1.061_405_4];
    let z = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / P.mul_add(z, 1.0);
    let mut poly = A[4];
    poly = poly.mul_add(t, A[3]);
    poly = poly.mul_add(t, A[2]);
    poly = poly.mul_add(t, A[1]);
    poly = poly.mul_add(t, A[0]);
    // 1 - erf(z) for z >= 0.
    let tail = poly * t * exp(-z * z);
    let factor = if x < 0.0 { tail } else { 2.0 - tail };
    0.5 * x * factor
}

#[inline(always)]
fn sum(xs: &[f32]) -> f32 {
    let mut lanes = [0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (lane, x) in lanes.iter_mut().zip(chunk) {
            *lane += x;
        }
    }
    lanes.iter().sum::<f32>() + rest.iter().sum::<f32>()
}

#[inline(always)]
fn max(xs: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = xs.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane = if x > *lane { x } else { *lane };
        }
    }
    lanes.iter().chain(rest).fold(f32::NEG_INFINITY, |a, &b| a.max(b))
}

/// `xs[i] = gelu(xs[i] + bias[i % width])`, a dense layer's bias added on the way.
#[inline(always)]
fn bias_gelu_body(xs: &mut [f32], bias: &[f32]) {
    for row in xs.chunks_exact_mut(bias.len()) {
        for (x, b) in row.iter_mut().zip(bias) {
            *x = gelu(*x + b);
        }
    }
}

#[inline(always)]
fn softmax_body(scores: &mut [f32], width: usize) {
    for row in scores.chunks_exact_mut(width) {
        let top = max(row);
        for x in row.iter_mut() {
            *x = exp(*x - top);
        }
        let scale = 1.0 / sum(row);
        for x in row.iter_mut() {
            *x *= scale;
        }
    }
}

/// `rows[i] = norm(rows[i] + bias + residual[i]) * gamma + beta`, each part where one is given, the
/// mean and variance over each row in two passes as PyTorch's `layer_norm` takes them.
#[inline(always)]
#[allow(clippy::cast_precision_loss)]
fn add_norm_body(rows: &mut [f32], bias: Option<&[f32]>, residual: Option<&[f32]>, gamma: &[f32], beta: &[f32], eps: f32) {
    let width = gamma.len();
    let count = width as f32;
    for (index, row) in rows.chunks_exact_mut(width).enumerate() {
        if let Some(bias) = bias {
            for (x, b) in row.iter_mut().zip(bias) {
                *x += b;
            }
        }
        if let Some(residual) = residual {
            for (x, r) in row.iter_mut().zip(&residual[index * width..(index + 1) * width]) {
                *x += r;
            }
        }
        let mean = sum(row) / count;
        let mut lanes = [0f32; LANES];
        let chunks = row.chunks_exact(LANES);
        let rest: f32 = chunks.remainder().iter().map(|x| (x - mean) * (x - mean)).sum();
        for chunk in chunks {
            for (lane, x) in lanes.iter_mut().zip(chunk) {
                let d = x - mean;
                *lane = d.mul_add(d, *lane);
            }
        }
        let variance = (lanes.iter().sum::<f32>() + rest) / count;
        let inverse = 1.0 / (variance + eps).sqrt();
        for ((x, g), b) in row.iter_mut().zip(gamma).zip(beta) {
            *x = ((*x - mean) * inverse).mul_add(*g, *b);
        }
    }
}

/// One head's attention over one text's tokens.
pub(crate) struct Head<'a> {
    /// The text's rows of the query/key/value product, `len × 3·hidden`, bias not yet added.
    pub(crate) qkv: &'a [f32],
    /// The bias of that product, `3·hidden`.
    pub(crate) bias: &'a [f32],
    pub(crate) hidden: usize,
    pub(crate) head: usize,
    pub(crate) dims: usize,
}

/// `softmax(Q Kᵀ / √d) V` for one head, `len × d`.
#[inline(always)]
fn head_body<S: pulp::Simd>(simd: S, head: &Head<'_>) -> Vec<f32> {
    match head.dims {
        32 => head_blocked::<S, 32>(simd, head),
        64 => head_blocked::<S, 64>(simd, head),
        _ => head_plain(head),
    }
}

/// Rows of queries (and of output) each step of the blocked products takes.
const ROWS: usize = 4;
// The second product walks a block's four rows by name.
const _: () = assert!(ROWS == 4);
/// The score of a padding column: `exp` of it less any real score is at most 1.2e-38.
const PADDING_SCORE: f32 = -1e30;

/// The lanes reduced pairwise, as a tree of vector operations rather than one after another.
#[inline(always)]
fn fold(mut lanes: [f32; LANES], op: impl Fn(f32, f32) -> f32) -> f32 {
    let mut half = LANES / 2;
    while half > 0 {
        for i in 0..half {
            lanes[i] = op(lanes[i], lanes[i + half]);
        }
        half /= 2;
    }
    lanes[0]
}

/// The largest of `xs`, whose length is a multiple of [`LANES`].
#[inline(always)]
fn max_lanes(xs: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    for chunk in xs.chunks_exact(LANES) {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane = if x > *lane { x } else { *lane };
        }
    }
    fold(lanes, |a, b| if a > b { a } else { b })
}

/// [`head_body`] for a head of `D` dimensions (a multiple of two of `S`'s vectors: 32 and 64 are,
/// for every instruction set `pulp` dispatches to), both products in register blocks: each step
/// keeps `ROWS` × two vectors of scores, or of outputs, in registers while it runs along the shared
/// dimension, instead of adding into memory element by element. Eight running sums: a fused
/// multiply-add waits four cycles for its result and a core may start two a cycle, so the four of
/// one vector a row left it half idle. Rows are padded to a multiple of `ROWS` and keys to a
/// multiple of `LANES` with zeros, which the softmax leaves out.
#[inline(always)]
#[allow(clippy::cast_precision_loss)]
fn head_blocked<S: pulp::Simd, const D: usize>(simd: S, head: &Head<'_>) -> Vec<f32> {
    let len = head.qkv.len() / (3 * head.hidden);
    let rows = len.div_ceil(ROWS) * ROWS;
    let width = len.div_ceil(LANES) * LANES;
    // Taken out of the thread's slot and put back rather than borrowed in a closure: a closure is a
    // function of its own, compiled without the instruction set this one is dispatched to.
    let mut scratch = SCRATCH.take();
    let need = rows * D + D * width + len * D + rows * width;
    if scratch.len() < need {
        scratch.resize(need, 0.0);
    }
    let (queries, rest) = scratch[..need].split_at_mut(rows * D);
    let (keys, rest) = rest.split_at_mut(D * width);
    let (values, scores) = rest.split_at_mut(len * D);
    let out = head_blocked_in::<S, D>(simd, head, len, queries, keys, values, scores);
    SCRATCH.set(scratch);
    out
}

thread_local! {
    /// The buffers of [`head_blocked`], kept by each thread from one head to the next.
    static SCRATCH: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

#[inline(always)]
#[allow(clippy::cast_precision_loss)]
fn head_blocked_in<S: pulp::Simd, const D: usize>(
    simd: S,
    head: &Head<'_>,
    len: usize,
    queries: &mut [f32],
    keys: &mut [f32],
    values: &mut [f32],
    scores: &mut [f32],
) -> Vec<f32> {
    let h = head.hidden;
    let stride = 3 * h;
    let rows = queries.len() / D;
    let width = keys.len() / D;
    let scale = 1.0 / (D as f32).sqrt();
    let at = head.head * D;
    let (q_bias, k_bias, v_bias) = (
        &head.bias[at..at + D],
        &head.bias[h + at..h + at + D],
        &head.bias[2 * h + at..2 * h + at + D],
    );
    // What earlier heads left: the padding rows of queries and columns of keys must be zero.
    queries[len * D..].fill(0.0);
    for key in keys.chunks_exact_mut(width) {
        key[len..].fill(0.0);
    }
    for (i, ((row, query), value)) in head
        .qkv
        .chunks_exact(stride)
        .zip(queries.chunks_exact_mut(D))
        .zip(values.chunks_exact_mut(D))
        .enumerate()
    {
        let (q, k, v): (&[f32; D], &[f32; D], &[f32; D]) = match (
            row[at..at + D].try_into(),
            row[h + at..h + at + D].try_into(),
            row[2 * h + at..2 * h + at + D].try_into(),
        ) {
            (Ok(q), Ok(k), Ok(v)) => (q, k, v),
            _ => continue,
        };
        for ((out, x), b) in query.iter_mut().zip(q).zip(q_bias) {
            *out = (x + b) * scale;
        }
        for ((out, x), b) in value.iter_mut().zip(v).zip(v_bias) {
            *out = x + b;
        }
        for (j, (x, b)) in k.iter().zip(k_bias).enumerate() {
            keys[j * width + i] = x + b;
        }
    }
    for (block, out) in queries.chunks_exact(ROWS * D).zip(scores.chunks_exact_mut(ROWS * width)) {
        let lanes = S::F32_LANES;
        let mut column = 0;
        while column + 2 * lanes <= width {
            score_step::<S, D, 2>(simd, block, keys, width, column, out);
            column += 2 * lanes;
        }
        while column + lanes <= width {
            score_step::<S, D, 1>(simd, block, keys, width, column, out);
            column += lanes;
        }
    }
    // Softmax of each real row, over whole blocks of lanes: the padding columns get a score that
    // `exp` takes to (next to) nothing. The 1/sum scales the row here: scaling the output rows after
    // the second product was compiled across rows, into gathers and scatters.
    for row in scores.chunks_exact_mut(width).take(len) {
        row[len..].fill(PADDING_SCORE);
        let top = max_lanes(row);
        let mut lanes = [0f32; LANES];
        for chunk in row.chunks_exact_mut(LANES) {
            for (x, lane) in chunk.iter_mut().zip(lanes.iter_mut()) {
                *x = exp(*x - top);
                *lane += *x;
            }
        }
        let inverse = 1.0 / fold(lanes, |a, b| a + b);
        for x in row.iter_mut() {
            *x *= inverse;
        }
    }
    let mut out = vec![0f32; rows * D];
    for (block, probabilities) in out.chunks_exact_mut(ROWS * D).zip(scores.chunks_exact(ROWS * width)) {
        debug_assert!(D.is_multiple_of(2 * S::F32_LANES), "{D} dimensions in steps of two vectors");
        let mut part = 0;
        while part + 2 * S::F32_LANES <= D {
            output_step::<S, D>(simd, probabilities, values, width, part, block);
            part += 2 * S::F32_LANES;
        }
    }
    out.truncate(len * D);
    out
}

/// One step of `Q Kᵀ`: the scores of `ROWS` queries (`block`, `ROWS × D`) against the `C` vectors
/// of keys from `column` on (`keys` is `D × width`, transposed), stored into `out` (`ROWS × width`).
/// The running sums are `pulp`'s vector type, so they stay in registers: as arrays of `f32` left to
/// the compiler's vectoriser, small changes elsewhere sometimes turned them into scalar sums on the
/// stack, six times slower.
#[inline(always)]
fn score_step<S: pulp::Simd, const D: usize, const C: usize>(
    simd: S,
    block: &[f32],
    keys: &[f32],
    width: usize,
    column: usize,
    out: &mut [f32],
) {
    let lanes = S::F32_LANES;
    let zero = simd.splat_f32s(0.0);
    let mut acc = [[zero; C]; ROWS];
    let block = &block[..ROWS * D];
    for j in 0..D {
        let (key, _) = S::as_simd_f32s(&keys[j * width + column..j * width + column + C * lanes]);
        for (r, sums) in acc.iter_mut().enumerate() {
            let q = simd.splat_f32s(block[r * D + j]);
            for (sum, k) in sums.iter_mut().zip(key) {
                *sum = simd.mul_add_f32s(q, *k, *sum);
            }
        }
    }
    store_rows::<S, C>(&acc, out, width, column);
}

/// Stores `ROWS` rows of `C` vectors into `out`, row `r` from `r * stride + at` on.
#[inline(always)]
fn store_rows<S: pulp::Simd, const C: usize>(rows: &[[S::f32s; C]; ROWS], out: &mut [f32], stride: usize, at: usize) {
    for (r, sums) in rows.iter().enumerate() {
        let start = r * stride + at;
        let (stored, _) = S::as_mut_simd_f32s(&mut out[start..start + C * S::F32_LANES]);
        for (o, sum) in stored.iter_mut().zip(sums) {
            *o = *sum;
        }
    }
}

/// One step of `P V`: `ROWS` rows of output (`block`, `ROWS × D`), two vectors of dimensions from
/// `part` on, from the block's probabilities (`ROWS × width`) and the values (`len × D`). The four
/// rows of probabilities are walked side by side, so no index is checked inside the loop.
#[inline(always)]
fn output_step<S: pulp::Simd, const D: usize>(
    simd: S,
    probabilities: &[f32],
    values: &[f32],
    width: usize,
    part: usize,
    block: &mut [f32],
) {
    let lanes = S::F32_LANES;
    let zero = simd.splat_f32s(0.0);
    let mut acc = [[zero; 2]; ROWS];
    let (p0, rest) = probabilities.split_at(width);
    let (p1, rest) = rest.split_at(width);
    let (p2, p3) = rest.split_at(width);
    for ((((value, &a), &b), &c), &d) in values.chunks_exact(D).zip(p0).zip(p1).zip(p2).zip(p3) {
        let (value, _) = S::as_simd_f32s(&value[part..part + 2 * lanes]);
        for (sums, p) in acc.iter_mut().zip([a, b, c, d]) {
            let p = simd.splat_f32s(p);
            for (sum, v) in sums.iter_mut().zip(value) {
                *sum = simd.mul_add_f32s(p, *v, *sum);
            }
        }
    }
    store_rows::<S, 2>(&acc, block, D, part);
}

/// [`head_body`] for any number of dimensions: the products as multiply-adds along whole rows
/// (keys stored transposed).
#[inline(always)]
#[allow(clippy::cast_precision_loss)]
fn head_plain(head: &Head<'_>) -> Vec<f32> {
    let (h, d) = (head.hidden, head.dims);
    let stride = 3 * h;
    let len = head.qkv.len() / stride;
    let scale = 1.0 / (d as f32).sqrt();
    let at = head.head * d;
    let mut queries = vec![0f32; len * d];
    let mut keys = vec![0f32; d * len];
    let mut values = vec![0f32; len * d];
    for (i, row) in head.qkv.chunks_exact(stride).enumerate() {
        for j in 0..d {
            queries[i * d + j] = (row[at + j] + head.bias[at + j]) * scale;
            keys[j * len + i] = row[h + at + j] + head.bias[h + at + j];
            values[i * d + j] = row[2 * h + at + j] + head.bias[2 * h + at + j];
        }
    }
    let mut scores = vec![0f32; len * len];
    for (row, query) in scores.chunks_exact_mut(len).zip(queries.chunks_exact(d)) {
        for (q, key) in query.iter().zip(keys.chunks_exact(len)) {
            for (s, k) in row.iter_mut().zip(key) {
                *s = q.mul_add(*k, *s);
            }
        }
    }
    softmax_body(&mut scores, len);
    let mut out = vec![0f32; len * d];
    for (o, row) in out.chunks_exact_mut(d).zip(scores.chunks_exact(len)) {
        for (p, value) in row.iter().zip(values.chunks_exact(d)) {
            for (x, v) in o.iter_mut().zip(value) {
                *x = p.mul_add(*v, *x);
            }
        }
    }
    out
}

/// Defines `$name` to run `$body` through `pulp`'s dispatch, so that its loops are compiled for the
/// best instruction set the CPU has.
macro_rules! dispatched {
    ($(#[$doc:meta])* $name:ident -> $out:ty, $body:ident, ($($arg:ident: $ty:ty),*)) => {
        dispatched!(@ $(#[$doc])* $name -> $out, |_simd| $body($($arg),*), ($($arg: $ty),*));
    };
    // The body takes the instruction set (`simd`) first, to use its vector types.
    ($(#[$doc:meta])* $name:ident -> $out:ty, $body:ident(simd), ($($arg:ident: $ty:ty),*)) => {
        dispatched!(@ $(#[$doc])* $name -> $out, |simd| $body(simd, $($arg),*), ($($arg: $ty),*));
    };
    (@ $(#[$doc:meta])* $name:ident -> $out:ty, |$simd:ident| $call:expr, ($($arg:ident: $ty:ty),*)) => {
        $(#[$doc])*
        pub(crate) fn $name<'a>($($arg: $ty),*) -> $out {
            #[allow(non_camel_case_types)]
            struct $name<'a> {
                $($arg: $ty,)*
            }
            impl pulp::WithSimd for $name<'_> {
                type Output = $out;
                #[inline(always)]
                fn with_simd<S: pulp::Simd>(self, $simd: S) -> $out {
                    let Self { $($arg),* } = self;
                    $call
                }
            }
            pulp::Arch::new().dispatch($name { $($arg,)* })
        }
    };
}

dispatched!(
    /// GELU of every element after adding the bias of its column, in place.
    bias_gelu -> (), bias_gelu_body, (xs: &'a mut [f32], bias: &'a [f32]));
dispatched!(
    /// Layer normalisation of every row, after adding `bias` and `residual` where given.
    add_norm -> (), add_norm_body, (rows: &'a mut [f32], bias: Option<&'a [f32]>, residual: Option<&'a [f32]>, gamma: &'a [f32], beta: &'a [f32], eps: f32));
dispatched!(
    /// One head's attention over one text (see [`Head`]).
    attend -> Vec<f32>, head_body(simd), (head: &'a Head<'a>));

#[cfg(test)]
mod tests {
    use super::*;

    fn erf_reference(x: f64) -> f64 {
        // The series and continued fraction of erf, in f64, far past f32's precision.
        if x.abs() < 3.0 {
            let mut term = x;
            let mut total = x;
            for n in 1..200 {
                let n = f64::from(n);
                term *= -x * x / n;
                total += term / (2.0 * n + 1.0);
            }
            total * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            let z = x.abs();
            let mut fraction = 0.0;
            for k in (1..100).rev() {
                fraction = f64::from(k) / 2.0 / (z + fraction);
            }
            let tail = (-z * z).exp() / std::f64::consts::PI.sqrt() / (z + fraction);
            x.signum() * (1.0 - tail)
        }
    }

    fn grid(from: f32, to: f32, steps: u32) -> impl Iterator<Item = f32> {
        (0..=steps).map(move |i| from + (to - from) * (i as f32 / steps as f32))
    }

    #[test]
    fn exp_is_within_two_units_in_the_last_place() {
        for x in grid(-87.0, 88.0, 200_000) {
            let got = f64::from(exp(x));
            let want = f64::from(x).exp();
            assert!(((got - want) / want).abs() < 2.5e-7, "exp({x}) = {got}, not {want}");
        }
        assert!(exp(-1000.0) < 1.3e-38 && exp(-1000.0) > 0.0);
        assert!(exp(1000.0).is_finite());
    }

    #[test]
    fn gelu_matches_its_definition() {
        for x in grid(-12.0, 12.0, 100_000) {
            let x64 = f64::from(x);
            let want = 0.5 * x64 * (1.0 + erf_reference(x64 / std::f64::consts::SQRT_2));
            let got = f64::from(gelu(x));
            assert!((got - want).abs() < 4e-7 * x64.abs().max(1.0), "gelu({x}) = {got}, not {want}");
        }
        let mut xs: Vec<f32> = grid(-6.0, 6.0, 999).collect();
        let bias = [0.5f32, -0.25];
        let each: Vec<f32> = xs.iter().enumerate().map(|(i, &x)| gelu(x + bias[i % 2])).collect();
        bias_gelu(&mut xs, &bias);
        for (i, (a, b)) in xs.iter().zip(&each).enumerate() {
            assert!(
                a.to_bits() == b.to_bits(),
                "element {i}: the dispatched loop gives {a}, the scalar function {b}"
            );
        }
    }

    #[test]
    fn softmax_rows_sum_to_one_and_keep_their_order() {
        let width = 37;
        let mut scores: Vec<f32> = (0..width * 3).map(|i| ((i * 7919) % 101) as f32 / 9.0 - 5.0).collect();
        let original = scores.clone();
        softmax_body(&mut scores, width);
        for (row, before) in scores.chunks(width).zip(original.chunks(width)) {
            let top = before.iter().copied().fold(f32::MIN, f32::max);
            let total: f64 = before.iter().map(|&x| f64::from(x - top).exp()).sum();
            for (got, x) in row.iter().zip(before) {
                let want = f64::from(x - top).exp() / total;
                assert!((f64::from(*got) - want).abs() < 1e-7, "{got} vs {want}");
            }
        }
    }

    #[test]
    fn add_norm_gives_mean_zero_and_the_gains() {
        let width = 40;
        let rows: Vec<f32> = (0..width * 2).map(|i| (i as f32).sin() * 3.0 + 1.0).collect();
        let residual: Vec<f32> = (0..width * 2).map(|i| (i as f32).cos()).collect();
        let gamma: Vec<f32> = (0..width).map(|i| 1.0 + i as f32 / 100.0).collect();
        let beta: Vec<f32> = (0..width).map(|i| i as f32 / 1000.0).collect();
        let mut got = rows.clone();
        let bias: Vec<f32> = (0..width).map(|i| i as f32 / 50.0).collect();
        add_norm(&mut got, Some(&bias), Some(&residual), &gamma, &beta, 1e-12);
        for (index, row) in got.chunks(width).enumerate() {
            let summed: Vec<f64> = (0..width)
                .map(|j| f64::from(rows[index * width + j]) + f64::from(bias[j]) + f64::from(residual[index * width + j]))
                .collect();
            let mean = summed.iter().sum::<f64>() / width as f64;
            let variance = summed.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / width as f64;
            for (j, x) in row.iter().enumerate() {
                let want = (summed[j] - mean) / (variance + 1e-12).sqrt() * f64::from(gamma[j]) + f64::from(beta[j]);
                assert!((f64::from(*x) - want).abs() < 2e-6, "{x} vs {want}");
            }
        }
    }

    #[test]
    fn a_head_attends_as_the_textbook_formula_says() {
        // Four dimensions go the plain way, 32 and 64 the blocked one; with 16 lanes, 37 tokens pad
        // both blocks and take two vectors of keys and then one, 64 only pairs, 3 and 1 only one.
        for (hidden, dims, len) in [
            (8usize, 4usize, 5usize),
            (64, 32, 37),
            (128, 64, 3),
            (64, 32, 1),
            (128, 64, 64),
            (64, 32, 50),
        ] {
            let qkv: Vec<f32> = (0..len * 3 * hidden).map(|i| ((i * 37) % 23) as f32 / 23.0 - 0.5).collect();
            head_matches_the_formula(hidden, dims, len, &qkv);
        }
    }

    #[test]
    fn a_head_whose_scores_are_all_far_below_zero_still_attends() {
        // Every query points away from every key, so every real score is about -100: a row's maximum
        // that counted the padding columns' zero would take all of them below exp's range.
        for (hidden, dims, len) in [(64usize, 32usize, 37usize), (128, 64, 5), (8, 4, 5)] {
            let qkv: Vec<f32> = (0..len * 3 * hidden)
                .map(|i| {
                    let (part, j) = ((i % (3 * hidden)) / hidden, i % hidden);
                    let wobble = ((i * 37) % 23) as f32 / 230.0;
                    match part {
                        0 => 2.0 + wobble,
                        1 => -50.0 / (dims as f32).sqrt() + wobble,
                        _ => j as f32 / 10.0 + wobble,
                    }
                })
                .collect();
            head_matches_the_formula(hidden, dims, len, &qkv);
        }
    }

    /// The dispatched kernel, and the same body on the scalar path and (where the CPU has it) on
    /// AVX2, whatever this machine dispatches to: each must match the formula.
    fn head_matches_the_formula(hidden: usize, dims: usize, len: usize, qkv: &[f32]) {
        let bias: Vec<f32> = (0..3 * hidden).map(|i| (i % 17) as f32 / 80.0).collect();
        let head = Head {
            qkv,
            bias: &bias,
            hidden,
            head: 1,
            dims,
        };
        head_output_matches(&head, &attend(&head), len);
        head_output_matches(&head, &head_body(pulp::Scalar::new(), &head), len);
        #[cfg(target_arch = "x86_64")]
        if let Some(simd) = pulp::x86::V3::try_new() {
            head_output_matches(&head, &head_body(simd, &head), len);
        }
    }

    fn head_output_matches(head: &Head<'_>, got: &[f32], len: usize) {
        let (qkv, bias, hidden, dims) = (head.qkv, head.bias, head.hidden, head.dims);
        let value = |row: usize, part: usize, j: usize| {
            f64::from(qkv[row * 3 * hidden + part * hidden + dims + j]) + f64::from(bias[part * hidden + dims + j])
        };
        for i in 0..len {
            let scores: Vec<f64> = (0..len)
                .map(|t| (0..dims).map(|j| value(i, 0, j) * value(t, 1, j)).sum::<f64>() / (dims as f64).sqrt())
                .collect();
            let top = scores.iter().copied().fold(f64::MIN, f64::max);
            let total: f64 = scores.iter().map(|s| (s - top).exp()).sum();
            for j in 0..dims {
                let want: f64 = (0..len).map(|t| (scores[t] - top).exp() / total * value(t, 2, j)).sum();
                let have = f64::from(got[i * dims + j]);
                assert!(
                    (have - want).abs() < 1e-6 * want.abs().max(1.0),
                    "d {dims}, row {i} column {j}: {have} vs {want}"
                );
            }
        }
    }
}
