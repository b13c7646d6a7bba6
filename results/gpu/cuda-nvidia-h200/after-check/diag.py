import faulthandler, sys, time, torch
faulthandler.dump_traceback_later(float(sys.argv[1]), exit=True)
import cells
t0 = time.time()
def say(*a):
    torch.cuda.synchronize(); print(f"[{time.time()-t0:6.2f}s]", *a, flush=True)
dev = "cuda"
for (H, L, B, T, drop) in [(200, 2, 20, 20, 0.0), (200, 2, 20, 20, 0.5), (650, 2, 20, 35, 0.5)]:
    torch.manual_seed(0)
    m = cells.build("triton_lstm", H, H, L, drop).to(dev)
    say("built", H, L, B, T, drop, m.describe_backend(dev, batch=B))
    ref = cells.build("cudnn_lstm", H, H, L, 0.0).to(dev); ref.load_state_dict(m.state_dict())
    state = None
    for w in range(4):
        x = torch.randn(T, B, H, device=dev, requires_grad=True)
        y, st = m(x, state); say("fwd", w)
        (y.square().mean() + st[0].sum() + st[1].sum()).backward(); say("bwd", w)
        state = tuple(s.detach() for s in st)
    if drop == 0.0:
        x = torch.randn(T, B, H, device=dev)
        with torch.no_grad():
            a, _ = m(x); b, _ = ref(x)
        say("max|triton-cudnn|", (a - b).abs().max().item())
    m.eval()
    with torch.no_grad():
        y, st = m(torch.randn(410, B, H, device=dev)); say("nograd eval B", B, "T 410")
        y, st = m(torch.randn(8192, 1, H, device=dev)); say("nograd eval B 1 T 8192")
        y, st = m(torch.randn(8192, 1, H, device=dev), st); say("nograd eval B 1 T 8192 carried")
    m.train()
    y, st = m(torch.randn(T, B, H, device=dev, requires_grad=True)); y.sum().backward(); say("train again")
say("diag done")
