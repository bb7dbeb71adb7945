import pytest
import torch

from worker.training import device
from worker.training.device import Hardware, detect_hardware, mixed_precision

CPU = torch.device("cpu")


class TestMixedPrecision:
    def test_bf16_only_where_the_cpu_does_it_natively(self):
        assert not mixed_precision(CPU, frozenset({"avx2", "fma"}))
        assert not mixed_precision(CPU, frozenset({"avx512f", "avx512bw"}))
        assert mixed_precision(CPU, frozenset({"avx512f", "avx512_bf16"}))
        assert mixed_precision(CPU, frozenset({"amx_bf16"}))

    def test_always_on_cuda(self):
        assert mixed_precision(torch.device("cuda"), frozenset())


class TestHardware:
    @pytest.fixture
    def on_cpu(self, monkeypatch: pytest.MonkeyPatch) -> list[int]:
        """A CPU-only machine whose flags say `avx512_bf16`; counts the reads of the flags."""
        reads: list[int] = []

        def flags() -> frozenset[str]:
            reads.append(1)
            return frozenset({"avx512f", "avx512_bf16"})

        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        monkeypatch.setattr(device, "cpu_flags", flags)
        return reads

    def test_detect_reads_the_cpu_flags_once(self, on_cpu):
        hardware = detect_hardware()
        assert hardware == Hardware(CPU, bf16=True)
        assert len(on_cpu) == 1
        # Entering its autocast asks the hardware nothing more.
        for _ in range(3):
            with hardware.autocast():
                pass
        assert len(on_cpu) == 1

    def test_bf16_autocast_computes_in_bf16(self):
        layer = torch.nn.Linear(4, 2)
        with Hardware(CPU, bf16=True).autocast():
            assert layer(torch.ones(1, 4)).dtype == torch.bfloat16

    def test_fp32_is_no_autocast_at_all(self):
        layer = torch.nn.Linear(4, 2)
        with Hardware(CPU, bf16=False).autocast():
            assert not torch.is_autocast_enabled("cpu")
            assert layer(torch.ones(1, 4)).dtype == torch.float32
