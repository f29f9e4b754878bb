//! The host versions of the kernels, on slices, with the same operations in
//! the same order (Rust never fuses `a * b + c`), so they give the bits the
//! GPU gives.

/// `y[i] = a * x[i] + y[i]`
pub fn saxpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// `out[i] = a * x[i]`
pub fn scale(out: &mut [f32], a: f32, x: &[f32]) {
    for (o, &x) in out.iter_mut().zip(x) {
        *o = a * x;
    }
}

/// `out[i] = a[i] + b[i]`
pub fn add(out: &mut [f32], a: &[f32], b: &[f32]) {
    for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
        *o = a + b;
    }
}

/// `r[i] = X[i, :] . w[..d] + w[d] - y[i]`
pub fn linreg_residual(r: &mut [f32], x: &[f32], w: &[f32], y: &[f32], d: usize) {
    for (i, r) in r.iter_mut().enumerate() {
        let mut acc = 0.0f32;
        for j in 0..d {
            acc += x[i * d + j] * w[j];
        }
        acc += w[d];
        *r = acc - y[i];
    }
}

/// Gradients of the mean squared error into `g` (`d + 1` values) and the
/// loss into `losses[*step]`; `*step += 1`.
pub fn linreg_grad(
    g: &mut [f32],
    losses: &mut [f32],
    step: &mut u64,
    x: &[f32],
    r: &[f32],
    d: usize,
) {
    let n = r.len();
    let (two_over_n, inv_n) = (2.0 / n as f32, 1.0 / n as f32);
    for (t, g) in g.iter_mut().enumerate().take(d) {
        let mut acc = 0.0f32;
        for i in 0..n {
            acc += r[i] * x[i * d + t];
        }
        *g = acc * two_over_n;
    }
    let mut acc = 0.0f32;
    for &r in r {
        acc += r;
    }
    g[d] = acc * two_over_n;
    let mut acc = 0.0f32;
    for &r in r {
        acc += r * r;
    }
    if (*step as usize) < losses.len() {
        losses[*step as usize] = acc * inv_n;
    }
    *step += 1;
}

/// `w[j] = w[j] - lr * g[j]`
pub fn sgd(w: &mut [f32], g: &[f32], lr: f32) {
    for (w, &g) in w.iter_mut().zip(g) {
        *w -= lr * g;
    }
}
