//! Prints draws of Concord's exact samplers, one per line, for comparison with other
//! implementations (`.ci/opendp_compare.py`):
//! `draw gaussian A B N` (variance A/B) or `draw laplace S T N` (scale S/T).

use std::io::Write as _;

use concord_policy::dp::Noise;
use num_bigint::BigUint;

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [kind, num, den, n] = args.as_slice() else {
        return Err("usage: draw gaussian|laplace NUM DEN COUNT".into());
    };
    let num: u64 = num.parse().map_err(|_| format!("{num} is not a number"))?;
    let den: u64 = den.parse().map_err(|_| format!("{den} is not a number"))?;
    let n: usize = n.parse().map_err(|_| format!("{n} is not a count"))?;
    if num == 0 || den == 0 {
        return Err("NUM and DEN must be positive".into());
    }
    let noise = match kind.as_str() {
        "gaussian" => Noise::Gaussian { a: BigUint::from(num), b: BigUint::from(den) },
        "laplace" => Noise::Laplace { s: BigUint::from(num), t: BigUint::from(den) },
        other => return Err(format!("unknown sampler {other}")),
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut rng = concord_policy::dp::OsBlocks::new();
    for _ in 0..n {
        writeln!(out, "{}", noise.sample_with(&mut rng)).map_err(|e| e.to_string())?;
    }
    out.flush().map_err(|e| e.to_string())
}
