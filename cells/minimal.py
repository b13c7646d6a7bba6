"""minGRU and minLSTM (Feng et al. 2024, "Were RNNs All We Needed?", arXiv 2410.01201): ``min_gru``, ``min_lstm``.

Per layer every gate depends on the input only (no hidden-to-hidden weights)::

    [k_z, k_h]      = weight_l{k} @ x_t + bias_l{k}         minGRU,  weight [2H, in]
    [k_f, k_i, k_h] = weight_l{k} @ x_t + bias_l{k}         minLSTM, weight [3H, in]
    g(x) = x + 0.5 for x >= 0, sigmoid(x) for x < 0;  h~_t = g(k_h)
    minGRU:  z_t = sigmoid(k_z);                        h_t = (1 - z_t) * h_{t-1} + z_t * h~_t
    minLSTM: f_t, i_t = sigmoid(k_f), sigmoid(k_i);     h_t = f_t/(f_t + i_t) * h_{t-1} + i_t/(f_t + i_t) * h~_t

Both are ``h_t = a_t * h_{t-1} + b_t`` with a_t in (0, 1) and b_t > 0, so the whole sequence is one scan:

- ``scan="parallel"`` (default), in log space (the paper's Appendix B): log a_t and log b_t come from
  ``logsigmoid`` (log z = logsigmoid(k_z), log(1 - z) = logsigmoid(-k_z); minLSTM's normalised gates
  from d = log i - log f as log f' = logsigmoid(-d), log i' = logsigmoid(d); log h~ = log(k_h + 0.5) or
  logsigmoid(k_h)).  ``logsigmoid(x)`` is ``-softplus(-x)`` without softplus's switch to the identity
  above 20, which is 1e-9 off: visible in float64.  With ``A_t = cumsum(log a)``::

      h_t = exp(A_t) * h_0 + exp(A_t + logcumsumexp_{s<=t}(log b_s - A_s))

  The initial state enters in linear space, never as log(h_0), so any real h_0 works (zeros: the LM's
  first window; negative values).  Every term is finite for finite inputs; exp(A_t) may underflow to 0.
  ``A_t + logcumsumexp(...)`` cancels two numbers of size |A_t|, so its float32 error grows with
  |A_t|, i.e. with the scanned length: a sequence is scanned in chunks of ``chunk`` steps (default
  64), the state carried between chunks in linear space as h_0 is.
  The backward pass is not autograd's through cumsum and logcumsumexp: that one adds and subtracts terms
  of the size of the sums and lost up to 4e-5 (relative, float32) in the gradients at T 37.  It is the
  recurrence's own, dh_t = dL/dh_t + a_{t+1} dh_{t+1}, run as the same scan backwards in time (its signed
  input as two positive scans), then d/dlog a_t = dh_t h_{t-1} a_t, d/dlog b_t = dh_t b_t, d/dh_0 = a_1 dh_1.
  Measured (torch 2.13.0, AMD EPYC, 2026-11-27; float32 against the float64 recurrence, nn.LSTM's init,
  standard normal inputs, states and upstream gradients, worst of every output and gradient): T 37, B 1, H 9,
  3 layers, 30 draws: 3.4e-6 (1.2e-6 in 16-step chunks; 4.3e-5 with autograd's backward); T 35, B 20, H 200,
  2 layers: 1.1e-6; the float32 sequential form 3e-7.  Forward only, in 64, H 64, B 4: 9.6e-7 at T 2048 and
  T 8192 in 64-step chunks, 3.1e-5 and 1.2e-4 in one scan (|A_T| about 6000).
  Cost on the CPU: ATen's logcumsumexp is a scalar loop (about 35 ns an element) and takes half the time,
  so at the PTB small shape (H 200, B 20, 2 layers, training-mode forward + backward, 1 thread, load 3-4,
  medians) minGRU's scan took 42 / 73 ms at T 20 / 35 and its sequential form 20 / 38 ms (minLSTM 44 / 80
  against 34 / 63; ``loop_lstm`` 56 / 109, ``cudnn_lstm`` (oneDNN) 28 / 46); at T 409 the scan is faster,
  846 against 1885 ms (minLSTM 918 against 3792).
- ``scan="sequential"``: :func:`min_gru_step` / :func:`min_lstm_step` in linear space, one Python step per
  timestep: the plain reference (the tests compare the scan with it) and the way to feed one token at a
  time in generation.

Parameters (``weight_l{k}`` [G*H, in], ``bias_l{k}`` [G*H]; G = 2 gates z, h for minGRU, G = 3 gates f, i, h
for minLSTM; uniform in +-1/sqrt(H) as nn.LSTM) are not nn.GRU's / nn.LSTM's, so the cells are kinds of their
own, "minGRU" and "minLSTM", whose state is h alone ([num_layers, B, H], like a GRU's).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.functional import logsigmoid

from cells.base import LayerStack

CHUNK = 64  # timesteps per log-space scan; see the module docstring
SCANS = ("parallel", "sequential")


def g(x: torch.Tensor) -> torch.Tensor:
    """The paper's activation: x + 0.5 for x >= 0, sigmoid(x) below (continuous, positive)."""
    return torch.where(x >= 0, x + 0.5, torch.sigmoid(x))


def log_g(x: torch.Tensor) -> torch.Tensor:
    """log g(x), finite for every finite x (both branches are, so neither poisons the gradient)."""
    return torch.where(x >= 0, torch.log(x.clamp_min(0) + 0.5), logsigmoid(x))


def min_gru_step(xp_t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """One minGRU step in linear space: xp_t [B, 2H] (projection plus bias; z, h), h [B, H] -> h."""
    k_z, k_h = xp_t.chunk(2, dim=-1)
    return torch.sigmoid(-k_z) * h + torch.sigmoid(k_z) * g(k_h)  # 1 - sigmoid(k) = sigmoid(-k)


def min_lstm_step(xp_t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """One minLSTM step in linear space: xp_t [B, 3H] (projection plus bias; f, i, h), h [B, H] -> h.

    f / (f + i) is computed as sigmoid(log f - log i): equal, and no 0/0 where both gates underflow."""
    k_f, k_i, k_h = xp_t.chunk(3, dim=-1)
    d = logsigmoid(k_i) - logsigmoid(k_f)  # log(i / f)
    return torch.sigmoid(-d) * h + torch.sigmoid(d) * g(k_h)


def min_gru_log_coeffs(xp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """xp [T, B, 2H] -> (log a, log b), each [T, B, H]: a = 1 - z, b = z * g(k_h)."""
    k_z, k_h = xp.chunk(2, dim=-1)
    return logsigmoid(-k_z), logsigmoid(k_z) + log_g(k_h)


def min_lstm_log_coeffs(xp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """xp [T, B, 3H] -> (log a, log b), each [T, B, H]: a = f / (f + i), b = i / (f + i) * g(k_h)."""
    k_f, k_i, k_h = xp.chunk(3, dim=-1)
    d = logsigmoid(k_i) - logsigmoid(k_f)  # log(i / f)
    return logsigmoid(-d), logsigmoid(d) + log_g(k_h)


def scan_forward(log_a: torch.Tensor, log_b: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """h_t = a_t * h_{t-1} + b_t (t = 1..T) in log space: log_a, log_b [T, B, H] (log b may be -inf: b = 0), h0
    [B, H], any real, added in linear space.  Returns every h_t, [T, B, H]."""
    a_cum = torch.cumsum(log_a, dim=0)
    return torch.exp(a_cum) * h0 + torch.exp(a_cum + torch.logcumsumexp(log_b - a_cum, dim=0))


class _LogScan(torch.autograd.Function):
    """:func:`scan_forward` with the recurrence's own backward (see the module docstring)."""

    @staticmethod
    def forward(ctx, log_a, log_b, h0):
        h = scan_forward(log_a, log_b, h0)
        ctx.save_for_backward(log_a, log_b, h0, h)
        return h

    @staticmethod
    def backward(ctx, grad_h):
        log_a, log_b, h0, h = ctx.saved_tensors
        # dh_t = grad_h_t + a_{t+1} dh_{t+1}: the same recurrence run backwards in time (a_{T+1} is never used);
        # its signed input as the difference of two positive scans, log 0 = -inf where a part is zero.
        rev_log_a = torch.cat([torch.zeros_like(log_a[:1]), log_a[1:].flip(0)])
        rev_grad, zero = grad_h.flip(0), torch.zeros_like(h0)
        dh = (scan_forward(rev_log_a, torch.log(rev_grad.clamp_min(0)), zero)
              - scan_forward(rev_log_a, torch.log((-rev_grad).clamp_min(0)), zero)).flip(0)
        a = torch.exp(log_a)
        h_prev = torch.cat([h0.unsqueeze(0), h[:-1]])
        return dh * h_prev * a, dh * torch.exp(log_b), a[0] * dh[0]  # d/dlog a_t, d/dlog b_t, d/dh0


def log_scan(log_a: torch.Tensor, log_b: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """Every h_t of h_t = a_t * h_{t-1} + b_t (t = 1..T), as a log-space parallel scan.

    Args:
        log_a: [T, B, H], log of the coefficients a_t in (0, 1].
        log_b: [T, B, H], log of the inputs b_t > 0.
        h0: [B, H], the state before t = 1: any real values (added in linear space, never its log).
    Returns:
        h: [T, B, H].
    """
    return _LogScan.apply(log_a, log_b, h0)


class _MinimalStack(LayerStack):
    """A stack of minGRU or minLSTM layers; see :mod:`cells.minimal` and :mod:`cells` for the interface.

    Args:
        input_size, hidden_size, num_layers, dropout: as ``torch.nn.LSTM`` (dropout between layers, in training).
        scan: "parallel" (log-space scan over time, default) or "sequential" (one linear-space step per
            timestep, the reference); may be changed on the module at any time.
        chunk: timesteps per log-space scan (a longer sequence is scanned chunk by chunk).
    """

    gates = 0
    _step = None  # min_gru_step or min_lstm_step
    _log_coeffs = None  # min_gru_log_coeffs or min_lstm_log_coeffs
    parameter_layout = ""  # cells.available and `rnnbench cells` show it

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, dropout: float = 0.0,
                 scan: str = "parallel", chunk: int = CHUNK):
        super().__init__(input_size, hidden_size, num_layers, dropout)
        if scan not in SCANS:
            raise ValueError(f"scan must be one of {', '.join(SCANS)}; got {scan!r}")
        if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk <= 0:
            raise ValueError(f"chunk must be a positive integer, got {chunk!r}")
        self.scan, self.chunk = scan, chunk
        for k in range(num_layers):
            in_k = input_size if k == 0 else hidden_size
            self.register_parameter(f"weight_l{k}", nn.Parameter(torch.empty(self.gates * hidden_size, in_k)))
            self.register_parameter(f"bias_l{k}", nn.Parameter(torch.empty(self.gates * hidden_size)))
        self.reset_parameters()

    def project(self, k: int, x: torch.Tensor) -> torch.Tensor:
        """Layer ``k``'s gate pre-activations for all timesteps: x [T, B, in] -> [T, B, G*H]."""
        w, b = getattr(self, f"weight_l{k}"), getattr(self, f"bias_l{k}")
        return torch.addmm(b, x.reshape(-1, x.shape[-1]), w.t()).view(x.shape[0], x.shape[1], -1)

    def layer(self, k, x, h):
        xp = self.project(k, x)
        if self.scan == "sequential":
            ys = []
            for t in range(xp.shape[0]):
                h = type(self)._step(xp[t], h)
                ys.append(h)
            return torch.stack(ys), h
        log_a, log_b = type(self)._log_coeffs(xp)
        ys = []
        for start in range(0, xp.shape[0], self.chunk):
            y = log_scan(log_a[start:start + self.chunk], log_b[start:start + self.chunk], h)
            h = y[-1]
            ys.append(y)
        return (ys[0] if len(ys) == 1 else torch.cat(ys)), h

    def describe_backend(self, device: str | torch.device) -> str:
        device = torch.device(device)
        if self.scan == "sequential":
            return f"PyTorch eager loop ({device.type} ATen ops, one linear-space step per timestep)"
        return f"PyTorch log-space parallel scan (logcumsumexp, {self.chunk}-step chunks), {device.type} ATen ops"

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scan={self.scan}, chunk={self.chunk}"


class MinGRU(_MinimalStack):
    mode = "minGRU"
    gates = 2
    _step = staticmethod(min_gru_step)
    _log_coeffs = staticmethod(min_gru_log_coeffs)
    parameter_layout = ("weight_l{k} [2H, in], bias_l{k} [2H] per layer (gates z, h): 2H(in+1) parameters, "
                        "no hidden-to-hidden weights; not nn.GRU's")


class MinLSTM(_MinimalStack):
    mode = "minLSTM"
    gates = 3
    _step = staticmethod(min_lstm_step)
    _log_coeffs = staticmethod(min_lstm_log_coeffs)
    parameter_layout = ("weight_l{k} [3H, in], bias_l{k} [3H] per layer (gates f, i, h): 3H(in+1) parameters, "
                        "no hidden-to-hidden weights, no cell state; not nn.LSTM's")
