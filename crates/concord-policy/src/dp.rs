//! Differential privacy: exact samplers of discrete Laplace and discrete Gaussian noise, the
//! noise each aggregate gets, and the arithmetic of budgets.
//!
//! The samplers are Canonne, Kamath and Steinke's ("The Discrete Gaussian for Differential
//! Privacy", 2020, algorithms 1 to 3), in exact rational arithmetic on big integers: no floating
//! point touches a draw, so no rounding leaks which value was noised. Randomness comes from the
//! operating system's CSPRNG, read in blocks ([`OsBlocks`]).
//!
//! Invariant: every noise scale is an exact rational computed from the policy's integers (the
//! sensitivity in fixed-point units, the cost in nano-units).

use num_bigint::{BigInt, BigUint, RandBigInt as _};
use num_traits::{One as _, ToPrimitive as _, Zero as _};
use rand::rngs::OsRng;
use rand::{CryptoRng, RngCore};

use crate::{Mechanism, Privacy};

/// A privacy parameter (rho or epsilon) in units of 10⁻⁹, so that budgets add exactly.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Units(pub u64);

impl Units {
    /// No privacy at all.
    pub const ZERO: Units = Units(0);
    const PER_ONE: u64 = 1_000_000_000;

    /// From a decimal number of at most nine decimal places, from 0 to 10⁶.
    pub fn from_f64(v: f64) -> Result<Self, String> {
        if !(v.is_finite() && (0.0..=1e6).contains(&v)) {
            return Err(format!("{v} must be a number from 0 to 1000000"));
        }
        let nanos = (v * Self::PER_ONE as f64).round();
        if (nanos / Self::PER_ONE as f64 - v).abs() > 1e-12 * v.max(1.0) {
            return Err(format!("{v} has more than nine decimal places"));
        }
        Ok(Self(nanos as u64))
    }

    /// The value as a decimal number: units divided by 10⁹.
    pub fn as_f64(self) -> f64 {
        self.0 as f64 / Self::PER_ONE as f64
    }

    /// `self - other`, or `None` when `other` is larger.
    pub fn checked_sub(self, other: Units) -> Option<Units> {
        self.0.checked_sub(other.0).map(Units)
    }
}

impl std::fmt::Display for Units {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let whole = self.0 / Self::PER_ONE;
        let frac = self.0 % Self::PER_ONE;
        if frac == 0 {
            write!(f, "{whole}")
        } else {
            let digits = format!("{frac:09}");
            write!(f, "{whole}.{}", digits.trim_end_matches('0'))
        }
    }
}

/// The operating system's CSPRNG read a block at a time: the same bytes [`OsRng`] gives, with
/// one system call per 4 KiB instead of one per word (a draw takes a few dozen words). Bytes
/// are wiped from the block as they are handed out. For the draws of one release.
pub struct OsBlocks {
    block: Box<[u8; 4096]>,
    used: usize,
}

impl OsBlocks {
    /// An empty block: the first draw reads the operating system's CSPRNG.
    pub fn new() -> Self {
        Self { block: Box::new([0; 4096]), used: 4096 }
    }
}

impl Default for OsBlocks {
    fn default() -> Self {
        Self::new()
    }
}

impl RngCore for OsBlocks {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }

    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        // As OsRng::fill_bytes: a CSPRNG that fails is not something to draw noise from.
        if let Err(e) = self.try_fill_bytes(dest) {
            panic!("the operating system's random number generator failed: {e}");
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        let mut done = 0;
        while done < dest.len() {
            if self.used == self.block.len() {
                OsRng.try_fill_bytes(&mut self.block[..])?;
                self.used = 0;
            }
            let n = (dest.len() - done).min(self.block.len() - self.used);
            let from = &mut self.block[self.used..self.used + n];
            dest[done..done + n].copy_from_slice(from);
            from.fill(0);
            self.used += n;
            done += n;
        }
        Ok(())
    }
}

impl CryptoRng for OsBlocks {}

fn big(v: u64) -> BigUint {
    BigUint::from(v)
}

/// `Bernoulli(n/d)`, `n <= d`, `d > 0`.
fn bernoulli<R: RngCore + CryptoRng>(rng: &mut R, n: &BigUint, d: &BigUint) -> bool {
    &rng.gen_biguint_below(d) < n
}

/// `Bernoulli(exp(-n/d))` for `n/d` in `[0, 1]` (CKS algorithm 1).
fn bernoulli_exp_le1<R: RngCore + CryptoRng>(rng: &mut R, n: &BigUint, d: &BigUint) -> bool {
    let mut k = BigUint::one();
    loop {
        if !bernoulli(rng, n, &(d * &k)) {
            break;
        }
        k += 1u32;
    }
    (&k % 2u32).is_one()
}

/// `Bernoulli(exp(-n/d))` for any `n/d >= 0`.
pub fn bernoulli_exp<R: RngCore + CryptoRng>(rng: &mut R, n: &BigUint, d: &BigUint) -> bool {
    let mut n = n.clone();
    while &n > d {
        if !bernoulli_exp_le1(rng, d, d) {
            return false;
        }
        n -= d;
    }
    bernoulli_exp_le1(rng, &n, d)
}

/// A draw of the discrete Laplace distribution with scale `num/den`: `P(x) ∝ exp(-|x|·den/num)`
/// (CKS algorithm 2, whose `t` is `num` and `s` is `den`). `num, den > 0`.
pub fn discrete_laplace<R: RngCore + CryptoRng>(rng: &mut R, num: &BigUint, den: &BigUint) -> BigInt {
    loop {
        let u = rng.gen_biguint_below(num);
        if !bernoulli_exp(rng, &u, num) {
            continue;
        }
        let mut v = BigUint::zero();
        let one = BigUint::one();
        while bernoulli_exp_le1(rng, &one, &one) {
            v += 1u32;
        }
        let x = u + num * v;
        let y = x / den;
        let negative = rng.next_u32() & 1 == 1;
        if negative && y.is_zero() {
            continue;
        }
        let y = BigInt::from(y);
        return if negative { -y } else { y };
    }
}

/// A draw of the discrete Gaussian distribution with variance parameter `σ² = a/b`:
/// `P(x) ∝ exp(-x²/(2σ²))` (CKS algorithm 3). `a, b > 0`.
pub fn discrete_gaussian<R: RngCore + CryptoRng>(rng: &mut R, a: &BigUint, b: &BigUint) -> BigInt {
    // t = floor(σ) + 1; floor(sqrt(a/b)) = floor(sqrt(floor(a/b))).
    let t = (a / b).sqrt() + 1u32;
    let one = BigUint::one();
    loop {
        let y = discrete_laplace(rng, &t, &one);
        let abs = y.magnitude();
        // γ = (|y| - σ²/t)² / (2σ²) = (|y|·t·b - a)² / (2·a·b·t²)
        let ytb = abs * &t * b;
        let diff = if ytb >= *a { &ytb - a } else { a - &ytb };
        let num = &diff * &diff;
        let den = big(2) * a * b * &t * &t;
        if bernoulli_exp(rng, &num, &den) {
            return y;
        }
    }
}

/// The noise one aggregate of one query gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Noise {
    /// Discrete Gaussian with `σ² = a/b`, in fixed-point units.
    Gaussian {
        /// Numerator of the variance parameter σ².
        a: BigUint,
        /// Denominator of the variance parameter σ².
        b: BigUint,
    },
    /// Discrete Laplace with scale `s/t`, in fixed-point units.
    Laplace {
        /// Numerator of the scale.
        s: BigUint,
        /// Denominator of the scale.
        t: BigUint,
    },
}

impl Noise {
    /// The noise for an aggregate whose one privacy unit can change it by at most `linf` (in
    /// fixed-point units) in each of at most `l0` groups, when it gets `cost / shares` of the
    /// query's cost.
    pub fn for_aggregate(mechanism: Mechanism, cost: Units, shares: u64, l0: u64, linf: u64) -> Self {
        let cost = big(cost.0.max(1));
        let shares = big(shares.max(1));
        let linf = big(linf.max(1));
        let per_one = big(Units::PER_ONE);
        match mechanism {
            // ρ-zCDP: σ² = Δ₂² / (2ρ), Δ₂² = l0·linf², ρ = cost/shares.
            Mechanism::Zcdp => {
                Noise::Gaussian { a: big(l0.max(1)) * &linf * &linf * per_one * shares, b: big(2) * cost }
            }
            // ε-DP: scale = Δ₁ / ε, Δ₁ = l0·linf, ε = cost/shares.
            Mechanism::Pure => Noise::Laplace { s: big(l0.max(1)) * linf * per_one * shares, t: cost },
        }
    }

    /// A draw from the operating system's CSPRNG.
    pub fn sample(&self) -> BigInt {
        self.sample_with(&mut OsRng)
    }

    /// A draw from `rng`.
    pub fn sample_with<R: RngCore + CryptoRng>(&self, rng: &mut R) -> BigInt {
        match self {
            Noise::Gaussian { a, b } => discrete_gaussian(rng, a, b),
            Noise::Laplace { s, t } => discrete_laplace(rng, s, t),
        }
    }

    /// The standard deviation, in fixed-point units (for provenance and thresholds only).
    pub fn std_dev(&self) -> f64 {
        match self {
            Noise::Gaussian { a, b } => ratio(a, b).sqrt(),
            // A discrete Laplace of scale β has variance close to 2β².
            Noise::Laplace { s, t } => ratio(s, t) * std::f64::consts::SQRT_2,
        }
    }

    /// The scale parameter: σ for Gaussian noise, β for Laplace noise, in fixed-point units.
    pub fn scale(&self) -> f64 {
        match self {
            Noise::Gaussian { a, b } => ratio(a, b).sqrt(),
            Noise::Laplace { s, t } => ratio(s, t),
        }
    }

    /// A value `x` such that this noise exceeds `x` with probability at most `p`.
    pub fn tail_bound(&self, p: f64) -> f64 {
        let ln = (1.0 / p).ln().max(0.0);
        match self {
            // The discrete Gaussian is subgaussian with variance parameter σ².
            Noise::Gaussian { .. } => self.scale() * (2.0 * ln).sqrt(),
            Noise::Laplace { .. } => self.scale() * ln,
        }
    }
}

fn ratio(n: &BigUint, d: &BigUint) -> f64 {
    let (n, d) = (n.to_f64().unwrap_or(f64::MAX), d.to_f64().unwrap_or(f64::MAX));
    if d == 0.0 { f64::INFINITY } else { n / d }
}

impl Privacy {
    /// Fixed-point factor of summed values: `10^decimals`.
    pub fn fixed_point(&self) -> i64 {
        10i64.pow(self.decimals)
    }

    /// The largest absolute value of a clamped value of `column`, in fixed-point units.
    pub fn magnitude(&self, column: &str) -> Option<u64> {
        let (lo, hi) = self.bounds.get(column)?;
        let m = lo.abs().max(hi.abs()) * self.fixed_point() as f64;
        Some(m.ceil() as u64)
    }

    /// The noisy count of distinct privacy units a group needs to be released when no public
    /// key set covers it (partition selection, as in Wilson et al.'s DP SQL): a group of one
    /// unit passes with probability at most `delta`, spread over the `max_groups_per_unit`
    /// groups one unit can reach, and the minimum group size holds on the noisy count.
    /// `unit_noise` is the noise of that count (one unit adds one to it).
    pub fn threshold(&self, unit_noise: &Noise, min_group_size: u64) -> Option<u64> {
        let delta = self.delta?;
        let per_group = delta / f64::from(self.max_groups_per_unit.max(1));
        let tail = unit_noise.tail_bound(per_group).ceil();
        let tail = if tail.is_finite() && tail < 1e18 { tail as u64 } else { u64::MAX };
        Some(tail.saturating_add(1).max(min_group_size))
    }

    /// The (epsilon, delta) of differential privacy that one query of this policy amounts to.
    /// Under zCDP, rho is converted at the policy's delta (or [`DEFAULT_DELTA`] without one):
    /// epsilon = rho + 2·sqrt(rho·ln(1/delta)) (Bun and Steinke, proposition 1.3). Noisy
    /// selection of groups adds its own delta.
    pub fn guarantee(&self, selection: bool) -> Guarantee {
        let at = self.delta.unwrap_or(DEFAULT_DELTA);
        let selected = if selection { self.delta.unwrap_or(0.0) } else { 0.0 };
        match self.mechanism {
            Mechanism::Zcdp => {
                let rho = self.cost.as_f64();
                Guarantee { epsilon: rho + 2.0 * (rho * (1.0 / at).ln()).sqrt(), delta: at + selected }
            }
            Mechanism::Pure => Guarantee { epsilon: self.cost.as_f64(), delta: selected },
        }
    }
}

/// The delta at which zCDP's rho is stated as (epsilon, delta) when a policy gives none.
pub const DEFAULT_DELTA: f64 = 1e-6;

/// What a query's privacy cost amounts to in (epsilon, delta)-differential privacy.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Guarantee {
    /// The epsilon of (epsilon, delta)-differential privacy.
    pub epsilon: f64,
    /// The delta: 0 for pure DP without noisy selection of groups.
    pub delta: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_add_exactly() {
        let cost = Units::from_f64(0.005).expect("valid");
        let budget = Units::from_f64(1.0).expect("valid");
        assert_eq!(budget.0 / cost.0, 200);
        assert_eq!(cost.to_string(), "0.005");
        assert_eq!(budget.to_string(), "1");
        assert!(Units::from_f64(-1.0).is_err());
        assert!(Units::from_f64(f64::NAN).is_err());
        assert!(Units::from_f64(0.0000000001).is_err());
    }

    #[test]
    fn noise_scale_follows_the_mechanism() {
        let rho = Units::from_f64(0.5).expect("valid");
        // Δ₂ = 1, ρ = 0.5: σ² = 1.
        let g = Noise::for_aggregate(Mechanism::Zcdp, rho, 1, 1, 1);
        assert!((g.scale() - 1.0).abs() < 1e-12);
        // Two shares halve ρ: σ² = 2.
        let g2 = Noise::for_aggregate(Mechanism::Zcdp, rho, 2, 1, 1);
        assert!((g2.scale() - 2f64.sqrt()).abs() < 1e-12);
        let eps = Units::from_f64(0.1).expect("valid");
        // Δ₁ = 3·60, ε = 0.1: β = 1800.
        let l = Noise::for_aggregate(Mechanism::Pure, eps, 1, 3, 60);
        assert!((l.scale() - 1800.0).abs() < 1e-9);
    }

    fn privacy(mechanism: Mechanism, cost: f64, delta: Option<f64>) -> Privacy {
        Privacy {
            mechanism,
            cost: Units::from_f64(cost).expect("valid"),
            budget_per_requester: Units::from_f64(1.0).expect("valid"),
            budget_per_dataset: Units::from_f64(1.0).expect("valid"),
            max_groups_per_unit: 1,
            max_rows_per_group: 1,
            bounds: Default::default(),
            decimals: 2,
            keys: Default::default(),
            delta,
        }
    }

    #[test]
    fn the_threshold_hides_a_group_of_one_and_keeps_the_minimum() {
        let p = privacy(Mechanism::Zcdp, 0.005, Some(1e-6));
        let n = Noise::for_aggregate(Mechanism::Zcdp, p.cost, 1, 1, 1);
        let t = p.threshold(&n, 10).expect("a delta");
        // sigma = 10: one unit passes only beyond 1 + 10·sqrt(2·ln(1e6)) ≈ 53.6.
        assert_eq!(t, 54);
        // Little noise: the charter's minimum is what binds, on the noisy count.
        let big = privacy(Mechanism::Zcdp, 100.0, Some(1e-6));
        let n = Noise::for_aggregate(Mechanism::Zcdp, big.cost, 1, 1, 1);
        assert_eq!(big.threshold(&n, 10), Some(10));
        assert_eq!(privacy(Mechanism::Zcdp, 1.0, None).threshold(&n, 10), None);
    }

    #[test]
    fn rho_is_stated_as_epsilon_and_delta() {
        let g = privacy(Mechanism::Zcdp, 0.005, Some(1e-6)).guarantee(false);
        // 0.005 + 2·sqrt(0.005·ln(1e6)) ≈ 0.53065.
        assert!((g.epsilon - 0.530_652).abs() < 1e-5, "{g:?}");
        assert_eq!(g.delta, 1e-6);
        assert_eq!(privacy(Mechanism::Zcdp, 0.005, Some(1e-6)).guarantee(true).delta, 2e-6);
        let pure = privacy(Mechanism::Pure, 0.1, None).guarantee(false);
        assert_eq!((pure.epsilon, pure.delta), (0.1, 0.0));
    }
}

/// Statistical tests of the samplers against their exact distributions. Each test compares
/// 200 000 draws with the exact probabilities by a chi-square test whose critical value is
/// the 1 − 10⁻⁶ quantile: a correct sampler fails it by chance once in a million runs.
#[cfg(test)]
mod statistics {
    use super::*;

    const DRAWS: usize = 200_000;
    /// z of the one-sided 1e-6 tail of the standard normal.
    const Z: f64 = 4.753;

    /// Wilson–Hilferty: the chi-square quantile of `df` degrees of freedom at `Z`.
    fn critical(df: f64) -> f64 {
        let a = 2.0 / (9.0 * df);
        df * (1.0 - a + Z * a.sqrt()).powi(3)
    }

    /// Chi-square of `draws` against `pmf` (over all integers), bins with expected count under
    /// 20 merged into the two tails.
    fn chi_square(draws: &[i64], pmf: impl Fn(i64) -> f64) -> (f64, f64) {
        let n = draws.len() as f64;
        let mut lo = 0i64;
        while pmf(lo - 1) * n >= 20.0 {
            lo -= 1;
        }
        let mut hi = 0i64;
        while pmf(hi + 1) * n >= 20.0 {
            hi += 1;
        }
        let inside: f64 = (lo..=hi).map(&pmf).sum();
        let mut counts = vec![0f64; (hi - lo + 3) as usize];
        for &d in draws {
            let i = if d < lo {
                0
            } else if d > hi {
                counts.len() - 1
            } else {
                (d - lo + 1) as usize
            };
            counts[i] += 1.0;
        }
        let below: f64 = (1.0 - inside) / 2.0;
        let mut chi = 0.0;
        for (i, c) in counts.iter().enumerate() {
            let p = if i == 0 || i == counts.len() - 1 { below } else { pmf(lo + i as i64 - 1) };
            let e = p * n;
            if e > 0.0 {
                chi += (c - e).powi(2) / e;
            }
        }
        (chi, critical((counts.len() - 1) as f64))
    }

    fn laplace_pmf(beta: f64) -> impl Fn(i64) -> f64 {
        let q = (-1.0 / beta).exp();
        move |x| (1.0 - q) / (1.0 + q) * q.powi(x.unsigned_abs() as i32)
    }

    fn gaussian_pmf(sigma2: f64) -> impl Fn(i64) -> f64 {
        let k = (sigma2.sqrt() * 40.0) as i64 + 10;
        let norm: f64 = (-k..=k).map(|x| (-(x * x) as f64 / (2.0 * sigma2)).exp()).sum();
        move |x| (-(x * x) as f64 / (2.0 * sigma2)).exp() / norm
    }

    fn draw(mut f: impl FnMut() -> BigInt) -> Vec<i64> {
        (0..DRAWS).map(|_| f().to_i64().unwrap_or(i64::MAX)).collect()
    }

    #[test]
    fn os_blocks_hand_out_each_byte_once_across_blocks() {
        // Reads of odd sizes straddle the 4 KiB blocks; 32-byte windows of a CSPRNG's output
        // repeat, or are zero, with probability about 2^-240.
        let mut rng = OsBlocks::new();
        let mut out = vec![0u8; 3 * 4096 + 123];
        for chunk in out.chunks_mut(7) {
            rng.fill_bytes(chunk);
        }
        let windows: std::collections::BTreeSet<&[u8]> = out.chunks(32).filter(|w| w.len() == 32).collect();
        assert_eq!(windows.len(), out.len() / 32, "a 32-byte window repeats");
        assert!(!windows.contains(&[0u8; 32][..]), "a zero window");
        assert_ne!(rng.next_u64(), rng.next_u64());
    }

    #[test]
    fn discrete_laplace_follows_its_distribution() {
        for (s, t) in [(1u64, 1u64), (7, 2), (25, 1)] {
            let mut rng = OsBlocks::new();
            let draws = draw(|| discrete_laplace(&mut rng, &big(s), &big(t)));
            let (chi, crit) = chi_square(&draws, laplace_pmf(s as f64 / t as f64));
            assert!(chi < crit, "scale {s}/{t}: chi-square {chi} over {crit}");
        }
    }

    #[test]
    fn discrete_gaussian_follows_its_distribution() {
        for (a, b) in [(1u64, 1u64), (9, 4), (400, 1)] {
            let mut rng = OsBlocks::new();
            let draws = draw(|| discrete_gaussian(&mut rng, &big(a), &big(b)));
            let (chi, crit) = chi_square(&draws, gaussian_pmf(a as f64 / b as f64));
            assert!(chi < crit, "sigma^2 {a}/{b}: chi-square {chi} over {crit}");
            // The mean is 0: |mean| over 4.9 standard errors fails by chance with p < 1e-6.
            let mean = draws.iter().map(|&x| x as f64).sum::<f64>() / DRAWS as f64;
            let se = (a as f64 / b as f64 / DRAWS as f64).sqrt();
            assert!(mean.abs() < 4.9 * se, "sigma^2 {a}/{b}: mean {mean}");
        }
    }

    #[test]
    fn bernoulli_of_exp_has_its_probability() {
        // exp(-3/2): binomial standard error over 200 000 draws, 4.9 of them (p < 1e-6).
        let mut rng = OsBlocks::new();
        let hits = (0..DRAWS).filter(|_| bernoulli_exp(&mut rng, &big(3), &big(2))).count() as f64;
        let p = (-1.5f64).exp();
        let se = (p * (1.0 - p) / DRAWS as f64).sqrt();
        assert!((hits / DRAWS as f64 - p).abs() < 4.9 * se, "{}", hits / DRAWS as f64);
    }
}
