//! The total-variation term of the objective and its gradient: plain loops over a (3, H, W)
//! image, shared by the whole-image objective and the coordinator's lock-step tiles.

/// Sum of squared neighbour differences of a (3, H, W) image, per channel.
pub fn total_variation(x: &[f32], h: usize, w: usize) -> f64 {
    let mut tv = 0.0f64;
    for plane in x.chunks_exact(h * w) {
        for i in 0..h {
            let row = &plane[i * w..(i + 1) * w];
            for j in 0..w {
                if j + 1 < w {
                    tv += f64::from(row[j + 1] - row[j]).powi(2);
                }
                if i + 1 < h {
                    tv += f64::from(plane[(i + 1) * w + j] - row[j]).powi(2);
                }
            }
        }
    }
    tv
}

/// Adds `weight * dTV/dx` to `grad`.
pub fn tv_gradient(x: &[f32], h: usize, w: usize, weight: f32, grad: &mut [f32]) {
    let k = 2.0 * weight;
    for (plane, g) in x.chunks_exact(h * w).zip(grad.chunks_exact_mut(h * w)) {
        for i in 0..h {
            for j in 0..w {
                let at = i * w + j;
                if j + 1 < w {
                    let d = k * (plane[at + 1] - plane[at]);
                    g[at + 1] += d;
                    g[at] -= d;
                }
                if i + 1 < h {
                    let d = k * (plane[at + w] - plane[at]);
                    g[at + w] += d;
                    g[at] -= d;
                }
            }
        }
    }
}
