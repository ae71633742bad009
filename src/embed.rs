//! Row-initialization kernels for embedding matrices (row-major, f32 / f16 / bf16).
//!
//! New token rows start from statistics of the existing rows. The work is memory-bound
//! (one pass over the matrix for the mean), so it runs in parallel over row blocks with
//! f64 accumulation, and writes only the requested rows.

use crate::error::{Error, Result};
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use rayon::prelude::*;

/// A mutable view of a row-major matrix in one of the supported element types.
pub enum Matrix<'a> {
    F32(&'a mut [f32]),
    F16(&'a mut [f16]),
    Bf16(&'a mut [bf16]),
}

/// Rows per parallel task when summing.
const BLOCK: usize = 1024;
/// Row groups of `shifted_sums` run in parallel, each with a (1 + draws) x cols accumulator:
/// at most this many, and at most this much memory for them together.
const MAX_GROUPS: usize = 16;
const ACCUMULATOR_BUDGET: usize = 256 << 20;
/// Rows per matrix product in `shifted_sums`: few enough that the shifted block stays in
/// cache rather than streaming through memory, enough for the product to run at speed.
const PRODUCT_ROWS: usize = 128;

trait Element: Copy + Send + Sync {
    fn to_f64(self) -> f64;
    fn from_f64(v: f64) -> Self;
    /// A row widened to f32 (exact for every type here): the conversion runs vectorized
    /// (F16C for f16 where the CPU has it), which keeps the passes near memory bandwidth.
    fn widen(src: &[Self], dst: &mut [f32]);
    /// `src − shift`, widened to f32.
    fn widen_shifted(src: &[Self], shift: &[f32], dst: &mut [f32]) {
        Self::widen(src, dst);
        dst.iter_mut().zip(shift).for_each(|(d, &s)| *d -= s);
    }
}

impl Element for f32 {
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    fn widen(src: &[Self], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
    fn widen_shifted(src: &[Self], shift: &[f32], dst: &mut [f32]) {
        dst.iter_mut().zip(src).zip(shift).for_each(|((d, &x), &s)| *d = x - s);
    }
    fn from_f64(v: f64) -> Self {
        v as f32
    }
}

impl Element for f16 {
    fn to_f64(self) -> f64 {
        f16::to_f64(self)
    }
    fn widen(src: &[Self], dst: &mut [f32]) {
        src.convert_to_f32_slice(dst);
    }
    fn from_f64(v: f64) -> Self {
        f16::from_f64(v)
    }
}

impl Element for bf16 {
    fn to_f64(self) -> f64 {
        bf16::to_f64(self)
    }
    fn widen(src: &[Self], dst: &mut [f32]) {
        // bf16 is the high half of an f32.
        dst.iter_mut().zip(src).for_each(|(d, s)| *d = f32::from_bits(u32::from(s.to_bits()) << 16));
    }
    fn from_f64(v: f64) -> Self {
        bf16::from_f64(v)
    }
}

/// xoshiro256** seeded by splitmix64: the same numbers on every platform for a seed.
pub struct Rng([u64; 4]);

impl Rng {
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            let z = splitmix64(x);
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            z
        };
        Rng([next(), next(), next(), next()])
    }

    fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in (0, 1].
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

fn check(len: usize, cols: usize, rows: &[usize]) -> Result<usize> {
    if cols == 0 || !len.is_multiple_of(cols) {
        return Err(Error::Invalid(format!("a matrix of {len} elements cannot have {cols} columns")));
    }
    let n = len / cols;
    if let Some(&bad) = rows.iter().find(|&&r| r >= n) {
        return Err(Error::Invalid(format!("row {bad} is out of range for a matrix of {n} rows")));
    }
    Ok(n)
}

impl Matrix<'_> {
    fn len(&self) -> usize {
        match self {
            Matrix::F32(d) => d.len(),
            Matrix::F16(d) => d.len(),
            Matrix::Bf16(d) => d.len(),
        }
    }

    /// Mean (in f64) of the rows `include` says yes to.
    pub fn mean(&self, cols: usize, include: &[bool]) -> Result<Vec<f64>> {
        let n = check(self.len(), cols, &[])?;
        if include.len() != n {
            return Err(Error::Invalid(format!("{} row flags for {n} rows", include.len())));
        }
        match self {
            Matrix::F32(d) => mean_of(d, cols, include),
            Matrix::F16(d) => mean_of(d, cols, include),
            Matrix::Bf16(d) => mean_of(d, cols, include),
        }
    }

    /// `draws` samples of N(mean, scale · Σ) over the included rows, flattened (draws x cols):
    /// mean + `scale^½ · Xcᵀ g / √N` with g ~ N(0, I_N), whose covariance is `scale · Σ`,
    /// without forming Σ. One parallel pass over the matrix gives the mean and the weighted
    /// sums of every draw together; g's entries come from [`counter_normal`], so any device
    /// that walks the rows in another order draws the same g.
    pub fn mean_cov_samples(&self, cols: usize, include: &[bool], draws: usize, seed: u64, scale: f64) -> Result<Vec<f64>> {
        let n = check(self.len(), cols, &[])?;
        if include.len() != n {
            return Err(Error::Invalid(format!("{} row flags for {n} rows", include.len())));
        }
        let kept = include.iter().filter(|&&k| k).count();
        if kept == 0 {
            return Err(Error::Invalid("no rows to take the mean of".into()));
        }
        let ShiftedSums { shift, sums, noise } = match self {
            Matrix::F32(d) => shifted_sums(d, cols, include, draws, seed),
            Matrix::F16(d) => shifted_sums(d, cols, include, draws, seed),
            Matrix::Bf16(d) => shifted_sums(d, cols, include, draws, seed),
        };
        // With μ the mean: Σ g_k (x − μ) = Σ g_k (x − s) − (μ − s) · Σ g_k.
        let mean: Vec<f64> = shift.iter().zip(&sums[..cols]).map(|(&s, &d)| f64::from(s) + d / kept as f64).collect();
        let factor = (scale / kept as f64).sqrt();
        let mut samples = Vec::with_capacity(draws * cols);
        for (k, weighted) in sums[cols..].chunks_exact(cols).enumerate() {
            samples.extend((0..cols).map(|c| {
                let offset = mean[c] - f64::from(shift[c]);
                mean[c] + (weighted[c] - offset * noise[k]) * factor
            }));
        }
        Ok(samples)
    }

    /// Writes row k of `values` (flattened, rows.len() x cols; rounded once to the element
    /// type) into row `rows[k]`.
    pub fn write_rows(&mut self, cols: usize, rows: &[usize], values: &[f64]) -> Result<()> {
        check(self.len(), cols, rows)?;
        if values.len() != rows.len() * cols {
            return Err(Error::Invalid(format!("{} values for {} rows of {cols}", values.len(), rows.len())));
        }
        match self {
            Matrix::F32(d) => write(d, cols, rows, values),
            Matrix::F16(d) => write(d, cols, rows, values),
            Matrix::Bf16(d) => write(d, cols, rows, values),
        }
        Ok(())
    }

    /// Rows whose every element is zero (padding a resize added, never trained).
    pub fn zero_rows(&self, cols: usize) -> Result<Vec<usize>> {
        check(self.len(), cols, &[])?;
        Ok(match self {
            Matrix::F32(d) => zero_rows_of(d, cols),
            Matrix::F16(d) => zero_rows_of(d, cols),
            Matrix::Bf16(d) => zero_rows_of(d, cols),
        })
    }

    /// The mean of each group of rows (e.g. the pieces an old tokenizer splits a new token
    /// into), flattened (groups x cols); groups in parallel.
    pub fn group_means(&self, cols: usize, groups: &[Vec<usize>]) -> Result<Vec<f64>> {
        let n = check(self.len(), cols, &[])?;
        if let Some(group) = groups.iter().find(|g| g.is_empty() || g.iter().any(|&r| r >= n)) {
            return Err(Error::Invalid(format!("a group of rows {group:?} is empty or out of range for {n} rows")));
        }
        let mut out = vec![0.0f64; groups.len() * cols];
        out.par_chunks_mut(cols.max(1)).zip(groups).for_each(|(acc, group)| {
            for &r in group {
                match self {
                    Matrix::F32(d) => add_row(acc, &d[r * cols..(r + 1) * cols]),
                    Matrix::F16(d) => add_row(acc, &d[r * cols..(r + 1) * cols]),
                    Matrix::Bf16(d) => add_row(acc, &d[r * cols..(r + 1) * cols]),
                }
            }
            acc.iter_mut().for_each(|a| *a /= group.len() as f64);
        });
        Ok(out)
    }
}

fn add_row<T: Element>(acc: &mut [f64], row: &[T]) {
    acc.iter_mut().zip(row).for_each(|(a, &x)| *a += x.to_f64());
}

/// `values` plus N(0, std²) noise drawn in order from `Rng::new(seed)`.
pub fn add_noise(values: &mut [f64], seed: u64, std: f64) {
    let mut rng = Rng::new(seed);
    values.iter_mut().for_each(|v| *v += std * rng.normal());
}

fn zero_rows_of<T: Element>(data: &[T], cols: usize) -> Vec<usize> {
    data.par_chunks(cols)
        .enumerate()
        .filter(|(_, row)| row.iter().all(|x| x.to_f64() == 0.0))
        .map(|(r, _)| r)
        .collect()
}

fn mean_of<T: Element>(data: &[T], cols: usize, include: &[bool]) -> Result<Vec<f64>> {
    // Block sums are collected in order and added sequentially: the same bits on every run,
    // whatever the threads did (a parallel reduce's grouping depends on work stealing).
    let blocks: Vec<(Vec<f64>, usize)> = data
        .par_chunks(BLOCK * cols)
        .zip(include.par_chunks(BLOCK))
        .map(|(block, flags)| {
            let mut acc = vec![0.0f64; cols];
            let mut wide = vec![0.0f32; cols];
            let mut count = 0usize;
            for (row, &keep) in block.chunks_exact(cols).zip(flags) {
                if keep {
                    count += 1;
                    T::widen(row, &mut wide);
                    acc.iter_mut().zip(&wide).for_each(|(a, &x)| *a += f64::from(x));
                }
            }
            (acc, count)
        })
        .collect();
    let count: usize = blocks.iter().map(|(_, n)| n).sum();
    if count == 0 {
        return Err(Error::Invalid("no rows to take the mean of".into()));
    }
    let mut sum = vec![0.0f64; cols];
    for (acc, _) in &blocks {
        sum.iter_mut().zip(acc).for_each(|(s, a)| *s += a);
    }
    Ok(sum.into_iter().map(|s| s / count as f64).collect())
}

/// Rows used to pick the shift of `shifted_sums`.
const SHIFT_ROWS: usize = 1024;

/// The sums behind `mean_cov_samples` (over the included rows r, with s the mean of the
/// first SHIFT_ROWS of them).
struct ShiftedSums {
    /// s, in f32.
    shift: Vec<f32>,
    /// (1 + draws) x cols: row 0 = Σ_r (x_r − s), row 1 + k = Σ_r g[k][r] · (x_r − s).
    sums: Vec<f64>,
    /// Σ_r g[k][r], per draw k.
    noise: Vec<f64>,
}

/// [`ShiftedSums`] in one pass. Per block of PRODUCT_ROWS rows: the shifted included rows B
/// (n x cols, f32) and their weights W (n x (1 + draws): a column of ones for the sum, then
/// the noise), then Wᵀ B as one f32 matrix product in cache, added to f64 accumulators.
/// Shifting by s (within a few standard errors of the mean) keeps the f32 products at the
/// scale of the rows' spread, whatever their offset. Excluded rows are skipped, not multiplied by zero,
/// so a NaN in one cannot leak in.
fn shifted_sums<T: Element>(data: &[T], cols: usize, include: &[bool], draws: usize, seed: u64) -> ShiftedSums {
    let shift = shift_of(data, cols, include);
    // A fixed number of row groups (set by the accumulator's size, not by the threads), each
    // summed in order and then added in order: the same bits on every run and machine size.
    let n = include.len();
    let acc_bytes = ((1 + draws) * cols * 8).max(1);
    let groups = (ACCUMULATOR_BUDGET / acc_bytes).clamp(1, MAX_GROUPS).min(n.div_ceil(PRODUCT_ROWS).max(1));
    let group_rows = n.div_ceil(groups).next_multiple_of(PRODUCT_ROWS).max(PRODUCT_ROWS);
    let partial: Vec<(Vec<f64>, Vec<f64>)> = data
        .par_chunks(group_rows * cols)
        .zip(include.par_chunks(group_rows))
        .enumerate()
        .map(|(g, (rows, flags))| shifted_sums_of_group(rows, flags, g * group_rows, cols, &shift, draws, seed))
        .collect();
    let mut sums = vec![0.0f64; (1 + draws) * cols];
    let mut noise = vec![0.0f64; draws];
    for (acc, g) in &partial {
        sums.iter_mut().zip(acc).for_each(|(t, a)| *t += a);
        noise.iter_mut().zip(g).for_each(|(t, a)| *t += a);
    }
    ShiftedSums { shift, sums, noise }
}

/// The mean of the first SHIFT_ROWS included rows, in f32.
fn shift_of<T: Element>(data: &[T], cols: usize, include: &[bool]) -> Vec<f32> {
    let mut sum = vec![0.0f64; cols];
    let mut wide = vec![0.0f32; cols];
    let rows: Vec<&[T]> = data.chunks_exact(cols).zip(include).filter(|(_, &k)| k).map(|(r, _)| r).take(SHIFT_ROWS).collect();
    for row in &rows {
        T::widen(row, &mut wide);
        sum.iter_mut().zip(&wide).for_each(|(s, &x)| *s += f64::from(x));
    }
    sum.iter().map(|s| (s / rows.len().max(1) as f64) as f32).collect()
}

/// `shifted_sums` over the rows of one group (`first` = the index of its first row).
fn shifted_sums_of_group<T: Element>(
    data: &[T],
    include: &[bool],
    first: usize,
    cols: usize,
    shift: &[f32],
    draws: usize,
    seed: u64,
) -> (Vec<f64>, Vec<f64>) {
    let width = 1 + draws;
    let mut acc = vec![0.0f64; width * cols];
    let mut noise_sums = vec![0.0f64; draws];
    let mut block = vec![0.0f32; PRODUCT_ROWS * cols];
    let mut weights = Vec::with_capacity(PRODUCT_ROWS * width);
    let mut product = vec![0.0f32; width * cols];
    let keys: Vec<u64> = (0..draws as u64).map(|k| stream_key(seed, k)).collect();
    for (b, (rows, flags)) in data.chunks(PRODUCT_ROWS * cols).zip(include.chunks(PRODUCT_ROWS)).enumerate() {
        weights.clear();
        let mut kept = 0;
        for (i, (row, &keep)) in rows.chunks_exact(cols).zip(flags).enumerate() {
            if !keep {
                continue;
            }
            T::widen_shifted(row, shift, &mut block[kept * cols..(kept + 1) * cols]);
            kept += 1;
            let r = (first + b * PRODUCT_ROWS + i) as u64;
            weights.push(1.0f32);
            for (&key, total) in keys.iter().zip(noise_sums.iter_mut()) {
                let g = normal_at(key, r) as f32;
                weights.push(g);
                *total += f64::from(g);
            }
        }
        if kept == 0 {
            continue;
        }
        // SAFETY: the buffers hold exactly the described row-major matrices: weights is
        // kept x width (read transposed, width x kept), block kept x cols, product width x cols.
        unsafe {
            matrixmultiply::sgemm(
                width, kept, cols, 1.0,
                weights.as_ptr(), 1, width as isize,
                block.as_ptr(), cols as isize, 1,
                0.0, product.as_mut_ptr(), cols as isize, 1,
            );
        }
        acc.iter_mut().zip(&product).for_each(|(a, &p)| *a += f64::from(p));
    }
    (acc, noise_sums)
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A standard normal that depends only on (seed, stream, index): random access into
/// seeded noise, so row blocks can be drawn in any order, on any device, in parallel.
pub fn counter_normal(seed: u64, stream: u64, index: u64) -> f64 {
    normal_at(stream_key(seed, stream), index)
}

/// The key of one stream of [`counter_normal`] (hoisted out of loops over the index).
pub fn stream_key(seed: u64, stream: u64) -> u64 {
    splitmix64(splitmix64(seed) ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03))
}

/// [`counter_normal`] for a stream's key.
pub fn normal_at(base: u64, index: u64) -> f64 {
    let to_unit = |x: u64| ((x >> 11) as f64 + 1.0) / (1u64 << 53) as f64; // (0, 1]
    let u = to_unit(splitmix64(base ^ index.wrapping_mul(2)));
    let v = to_unit(splitmix64(base ^ index.wrapping_mul(2).wrapping_add(1)));
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

fn write<T: Element>(data: &mut [T], cols: usize, rows: &[usize], values: &[f64]) {
    for (&r, v) in rows.iter().zip(values.chunks_exact(cols)) {
        data[r * cols..(r + 1) * cols].iter_mut().zip(v).for_each(|(x, &y)| *x = T::from_f64(y));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_excludes_rows_and_rounds_once() {
        let mut data: Vec<f32> = vec![1.0, 2.0, 3.0, 4.0, 100.0, 100.0];
        let mut m = Matrix::F32(&mut data);
        let mean = m.mean(2, &[true, true, false]).unwrap();
        assert_eq!(mean, vec![2.0, 3.0]);
        m.write_rows(2, &[2], &mean).unwrap();
        assert_eq!(data, vec![1.0, 2.0, 3.0, 4.0, 2.0, 3.0]);
    }

    #[test]
    fn seeded_normals_repeat_and_look_normal() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        let xs: Vec<f64> = (0..100_000).map(|_| a.normal()).collect();
        assert!(xs.iter().zip((0..).map(|_| b.normal())).all(|(x, y)| *x == y));
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        assert!(mean.abs() < 0.02 && (var - 1.0).abs() < 0.02, "{mean} {var}");
    }

    #[test]
    fn counter_normals_are_normal_and_independent_of_order() {
        let xs: Vec<f64> = (0..100_000).map(|i| counter_normal(3, 1, i)).collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        assert!(mean.abs() < 0.02 && (var - 1.0).abs() < 0.02, "{mean} {var}");
        let lag: f64 = xs.windows(2).map(|w| w[0] * w[1]).sum::<f64>() / xs.len() as f64;
        assert!(lag.abs() < 0.02, "{lag}");
        assert_ne!(counter_normal(3, 1, 5), counter_normal(3, 2, 5));
        assert_ne!(counter_normal(3, 1, 5), counter_normal(4, 1, 5));
        assert_eq!(counter_normal(3, 1, 5), xs[5]);
    }

    #[test]
    fn mean_cov_samples_match_a_direct_sum_and_repeat_exactly() {
        let (n, cols, draws) = (1000, 5, 3);
        let mut rng = Rng::new(1);
        // An offset far larger than the spread: the shifted f32 products must not lose it.
        let mut data: Vec<f32> = (0..n * cols).map(|_| 100.0 + rng.normal() as f32).collect();
        let include: Vec<bool> = (0..n).map(|r| r % 7 != 0).collect();
        data[0] = f32::NAN; // an excluded row: must not leak into the sums
        let m = Matrix::F32(&mut data);
        let mean = m.mean(cols, &include).unwrap();
        let a = m.mean_cov_samples(cols, &include, draws, 9, 4.0).unwrap();
        let b = m.mean_cov_samples(cols, &include, draws, 9, 4.0).unwrap();
        assert_eq!(a, b);
        let Matrix::F32(d) = &m else { unreachable!() };
        let kept = include.iter().filter(|&&k| k).count() as f64;
        for k in 0..draws {
            for c in 0..cols {
                let direct: f64 = (0..n)
                    .filter(|&r| include[r])
                    .map(|r| counter_normal(9, k as u64, r as u64) * (f64::from(d[r * cols + c]) - mean[c]))
                    .sum();
                let noise = direct * (4.0 / kept).sqrt();
                // f32 products and f32 noise: agreement to float32 precision of the spread.
                assert!((a[k * cols + c] - mean[c] - noise).abs() < 1e-5, "{} vs {}", a[k * cols + c], mean[c] + noise);
            }
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        let mut data = vec![f16::ZERO; 6];
        let m = Matrix::F16(&mut data);
        assert!(m.mean(4, &[true]).is_err());
        assert!(m.group_means(2, &[vec![3]]).is_err());
        assert!(m.group_means(2, &[vec![]]).is_err());
    }
}
