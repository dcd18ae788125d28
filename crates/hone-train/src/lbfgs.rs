//! L-BFGS: minimising a smooth function of one flat vector of parameters, for the
//! small convex problems a head on frozen features is (see [`crate::probe`]).
//!
//! The textbook method (Nocedal & Wright, *Numerical Optimization*, algorithms 7.4 and
//! 7.5): the two-loop recursion over the last [`LbfgsOptions::history`] steps gives the
//! direction, scaled by `s·y / y·y` of the latest step; a backtracking line search
//! (Armijo's sufficient decrease, halving from the unit step) gives its length; a step
//! whose curvature `s·y` is not positive is not remembered, so the implicit Hessian
//! stays positive definite. It stops when the largest gradient component is at most
//! [`LbfgsOptions::tolerance`], after [`LbfgsOptions::max_iterations`], or when no
//! step along the direction decreases the function any more (the optimum within
//! rounding). Every operation is a plain tensor operation in the caller's dtype and
//! device, with no random numbers, so a solve is deterministic on the CPU.

use std::collections::VecDeque;

use tch::{Kind, Tensor};

use crate::error::TrainError;

/// When and how L-BFGS stops.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LbfgsOptions {
    /// Steps remembered by the two-loop recursion.
    pub history: usize,
    pub max_iterations: usize,
    /// Converged when every gradient component is at most this in absolute value.
    pub tolerance: f64,
}

impl Default for LbfgsOptions {
    fn default() -> Self {
        Self {
            history: 10,
            max_iterations: 500,
            tolerance: 1e-6,
        }
    }
}

/// Where L-BFGS stopped.
#[derive(Debug)]
pub struct Solution {
    pub x: Tensor,
    pub value: f64,
    /// The largest gradient component at `x`, in absolute value.
    pub gradient_max: f64,
    pub iterations: usize,
    /// Whether the gradient reached the tolerance.
    pub converged: bool,
}

/// Armijo's constant: a step must decrease the function by this share of what the
/// directional derivative promises.
const SUFFICIENT_DECREASE: f64 = 1e-4;
/// Halvings of the step before the direction is given up.
const MAX_HALVINGS: usize = 40;

fn dot(a: &Tensor, b: &Tensor) -> Result<f64, TrainError> {
    Ok(a.f_dot(b)?.f_double_value(&[])?)
}

fn max_abs(t: &Tensor) -> Result<f64, TrainError> {
    Ok(t.f_abs()?.f_max()?.f_double_value(&[])?)
}

/// A function to minimise: its value and gradient (a tensor of the point's shape) at a
/// point.
pub type Objective<'a> = dyn FnMut(&Tensor) -> Result<(f64, Tensor), TrainError> + 'a;

/// Minimises `f` from `x0`, a 1-D tensor.
pub fn minimize(
    f: &mut Objective<'_>,
    x0: Tensor,
    options: LbfgsOptions,
) -> Result<Solution, TrainError> {
    if x0.dim() != 1 {
        return Err(TrainError::InvalidInput(format!(
            "L-BFGS minimises over a vector, got shape {:?}",
            x0.size()
        )));
    }
    let mut x = x0;
    let (mut value, mut grad) = f(&x)?;
    // (s, y, 1 / y·s) of the remembered steps, oldest first.
    let mut memory: VecDeque<(Tensor, Tensor, f64)> = VecDeque::with_capacity(options.history);
    let mut iterations = 0;
    loop {
        let gradient_max = max_abs(&grad)?;
        if !value.is_finite() || !gradient_max.is_finite() {
            return Err(TrainError::InvalidInput(format!(
                "L-BFGS: the function is not finite ({value}) after {iterations} iterations"
            )));
        }
        if gradient_max <= options.tolerance || iterations >= options.max_iterations {
            return Ok(Solution {
                x,
                value,
                gradient_max,
                iterations,
                converged: gradient_max <= options.tolerance,
            });
        }
        let mut direction = two_loop(&grad, &memory)?.f_neg()?;
        let mut slope = dot(&grad, &direction)?;
        if slope >= 0.0 {
            // Rounding made the direction useless: start again from steepest descent.
            memory.clear();
            direction = grad.f_neg()?;
            slope = -dot(&grad, &grad)?;
        }
        // The first step has no curvature to scale it: a unit step of steepest
        // descent could overshoot by any factor, so it starts at length 1.
        let mut step = if memory.is_empty() {
            (1.0 / gradient_max).min(1.0)
        } else {
            1.0
        };
        let mut accepted = None;
        for _ in 0..MAX_HALVINGS {
            let candidate = x.f_add(&direction.f_mul_scalar(step)?)?;
            let (v, g) = f(&candidate)?;
            if v.is_finite() && v <= value + SUFFICIENT_DECREASE * step * slope {
                accepted = Some((candidate, v, g));
                break;
            }
            step /= 2.0;
        }
        let Some((next, next_value, next_grad)) = accepted else {
            // Nothing along the direction decreases the function: the optimum within
            // rounding.
            return Ok(Solution {
                x,
                value,
                gradient_max,
                iterations,
                converged: gradient_max <= options.tolerance,
            });
        };
        let s = next.f_sub(&x)?;
        let y = next_grad.f_sub(&grad)?;
        let sy = dot(&s, &y)?;
        if sy > 1e-12 * dot(&y, &y)?.max(f64::MIN_POSITIVE) {
            if memory.len() == options.history {
                memory.pop_front();
            }
            memory.push_back((s, y, 1.0 / sy));
        }
        x = next;
        value = next_value;
        grad = next_grad;
        iterations += 1;
    }
}

/// The two-loop recursion: the inverse-Hessian approximation of the remembered steps
/// applied to `grad`.
fn two_loop(grad: &Tensor, memory: &VecDeque<(Tensor, Tensor, f64)>) -> Result<Tensor, TrainError> {
    let mut q = grad.f_detach_copy()?;
    let mut alphas = Vec::with_capacity(memory.len());
    for (s, y, rho) in memory.iter().rev() {
        let alpha = rho * dot(s, &q)?;
        q = q.f_sub(&y.f_mul_scalar(alpha)?)?;
        alphas.push(alpha);
    }
    if let Some((s, y, _)) = memory.back() {
        let gamma = dot(s, y)? / dot(y, y)?;
        q = q.f_mul_scalar(gamma)?;
    }
    for ((s, y, rho), alpha) in memory.iter().zip(alphas.into_iter().rev()) {
        let beta = rho * dot(y, &q)?;
        q = q.f_add(&s.f_mul_scalar(alpha - beta)?)?;
    }
    Ok(q)
}

/// A vector of zeros of `n` f64, the usual starting point.
pub fn zeros(n: usize) -> Result<Tensor, TrainError> {
    Ok(Tensor::f_zeros(
        [n as i64],
        (Kind::Double, tch::Device::Cpu),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Rosenbrock function in 2-D: a curved valley, minimum 0 at (1, 1).
    fn rosenbrock(x: &Tensor) -> Result<(f64, Tensor), TrainError> {
        let v: Vec<f64> = Vec::try_from(x)?;
        let (a, b) = (v[0], v[1]);
        let value = (1.0 - a).powi(2) + 100.0 * (b - a * a).powi(2);
        let grad = [
            -2.0 * (1.0 - a) - 400.0 * a * (b - a * a),
            200.0 * (b - a * a),
        ];
        Ok((value, Tensor::f_from_slice(&grad)?))
    }

    #[test]
    fn finds_the_minimum_of_rosenbrocks_valley() {
        let x0 = Tensor::f_from_slice(&[-1.2f64, 1.0]).expect("x0");
        let solution = minimize(&mut rosenbrock, x0, LbfgsOptions::default()).expect("solve");
        let x: Vec<f64> = Vec::try_from(&solution.x).expect("x");
        assert!(solution.converged, "{solution:?}");
        assert!(
            (x[0] - 1.0).abs() < 1e-5 && (x[1] - 1.0).abs() < 1e-5,
            "{x:?}"
        );
        assert!(solution.iterations < 100, "{}", solution.iterations);
    }

    #[test]
    fn solves_a_quadratic_exactly() {
        // ½ xᵀAx − bᵀx with A diagonal 1..=20: the minimum is x = b / diag.
        let diag = Tensor::f_arange_start(1.0, 21.0, (Kind::Double, tch::Device::Cpu)).expect("a");
        let b = Tensor::f_ones([20], (Kind::Double, tch::Device::Cpu)).expect("b");
        let mut f = |x: &Tensor| -> Result<(f64, Tensor), TrainError> {
            let ax = x.f_mul(&diag)?;
            let value = 0.5 * dot(x, &ax)? - dot(&b, x)?;
            Ok((value, ax.f_sub(&b)?))
        };
        let solution =
            minimize(&mut f, zeros(20).expect("x0"), LbfgsOptions::default()).expect("solve");
        let expected = b.f_div(&diag).expect("x*");
        assert!(solution.converged);
        assert!(max_abs(&solution.x.f_sub(&expected).expect("diff")).expect("max") < 1e-6);
    }

    #[test]
    fn a_vector_it_must_be() {
        let x0 = Tensor::f_zeros([2, 2], (Kind::Double, tch::Device::Cpu)).expect("x0");
        assert!(minimize(&mut rosenbrock, x0, LbfgsOptions::default()).is_err());
    }
}
