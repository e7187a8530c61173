"""Few-shot on CLIP + CLAP against the release's own numbers (tests/fixtures/release/fewshot/,
see tests/fixtures/README.md): the adapter variant, losses, accuracies, fusion, the K-shot sets on
the real annotation files, prompts and tokenizers, and the release layout."""

from __future__ import annotations

import re
import sys

import pytest
import torch
from conftest import DATA, FIXTURES
from test_fewshot_files import TINY_CLIP, one_thread, tiny_overrides, write_tiny_files  # noqa: F401

from dgsct_cli.config import load_recipe
from dgsct_cli.models.adapter import AdapterSettings, DGSCTAdapter
from dgsct_cli.models.encoders.tokenizers import clap_tokenize, clip_tokenize, load_roberta_tokenizer
from dgsct_cli.models.heads.fewshot import clap_prompts, clip_prompts, fuse_logits
from dgsct_cli.tasks.fewshot import FewShotEvaluator, combine_losses, fewshot_loss_terms

REF = FIXTURES / "fewshot"
sys.path.insert(0, str(FIXTURES / "avvp-head"))
import detfill  # noqa: E402


@pytest.fixture(scope="module")
def loss_ref():
    return torch.load(REF / "fewshot_loss_metrics.pt", weights_only=True)


@pytest.fixture(scope="module")
def model_ref():
    return torch.load(REF / "fewshot_model.pt", weights_only=True)


# -- the adapter variant ----------------------------------------------------------------------


@pytest.mark.parametrize("setting", ["AVE_loc", "class"])
@pytest.mark.parametrize("direction", ["visual", "audio"])
def test_fewshot_adapter_matches_the_release(setting, direction):
    """2 tokens, the temporal gate term, alpha/beta/gamma of the recipe (few-shot
    nets/net_trans.py:466-600), in eval mode and (visual) with batch-statistics BatchNorm."""
    ref = torch.load(REF / "adapter_fewshot.pt", weights_only=True)
    entry, weights = ref[f"{setting}/{direction}"], ref[f"AVE_loc/{direction}"]
    c = entry["constructor"]
    settings = AdapterSettings(
        num_tokens=c["num_tk"], reduction=c["reduction_factor"], groups=c["num_conv_group"],
        alpha=c["alpha"], beta=c["beta"], temporal_gate=True, gamma=c["gamma"],
    )  # fmt: skip
    adapter = DGSCTAdapter(c["input_dim"], c["conv_dim_out"], c["linear_in"], c["conv_dim_in"], settings)
    own = adapter.state_dict()
    state = {}
    for key in weights["state_dict_keys"]:
        full = weights["fill_prefix"] + key
        if key.startswith("fc_caption."):  # unused by the release (caption is None): not built
            continue
        state[key] = detfill.fill(full, weights["weight_shapes"][full]).view(own[key].shape)
    adapter.load_state_dict(state, strict=True)
    x_name, y_name = ("x_visual", "x_audio") if direction == "visual" else ("x_audio", "x_visual")
    x = ref["inputs"][x_name].squeeze(-1).transpose(1, 2)  # [N, C, L, 1] -> [N, L, C]
    y = ref["inputs"][y_name].squeeze(-1).transpose(1, 2)
    with torch.no_grad():
        out, spatial = adapter.eval()(x, y)
    expected = entry["output"].squeeze(-1).transpose(1, 2)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(spatial, entry["spatial_att_maps"], rtol=1e-5, atol=1e-6)
    if "output_train_mode_bn" in entry:  # the zero-shot script leaves the adapters in train mode
        with torch.no_grad():
            out_train, _ = adapter.train()(x, y)
        torch.testing.assert_close(
            out_train, entry["output_train_mode_bn"].squeeze(-1).transpose(1, 2), rtol=1e-5, atol=1e-5
        )


# -- losses, accuracies, fusion -------------------------------------------------------------------

SCRIPTS = {
    "main_AVE.py": "fewshot-ave",
    "main_AVE_class.py": "fewshot-ave-cls",
    "main_LLP_class.py": "fewshot-llp-cls",
}


def _batch(gt: torch.Tensor) -> dict:
    if gt.dim() == 2:  # LLP: multi-hot video labels
        return {"labels": gt}
    return {"segment_labels": gt.argmax(dim=-1), "background_index": torch.tensor([28] * gt.shape[0])}


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_losses_match_the_release(loss_ref, script):
    ref = loss_ref[script]["train"]
    cfg = load_recipe(SCRIPTS[script]).loss
    batch = _batch(ref["GT"])
    for epoch, expected in ref["by_epoch"].items():
        scores = ref["outputs"]["event_scores"].clone().requires_grad_(True)
        outputs = {
            k: v.clone().requires_grad_(True) for k, v in ref["outputs"].items() if k != "event_scores"
        }
        outputs["event_logits"] = scores.view(2, 10, -1)
        terms = fewshot_loss_terms(outputs, batch, cfg, 28)
        total = combine_losses(terms, cfg, int(epoch))
        assert total.dtype == expected["loss_total"].dtype  # float64 for LLP, as released
        for name, key in (
            ("event", "loss_event"),
            ("audio_image", "loss_audio_image"),
            ("image_audio", "loss_image_audio"),
        ):
            torch.testing.assert_close(terms[name], expected[key], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(total, expected["loss_total"], rtol=1e-5, atol=1e-5)
        total.backward()
        grads = {"event_logits": "grad_event_scores", "logits_audio_image": "grad_logits_audio_image",
                 "logits_image_audio": "grad_logits_image_audio"}  # fmt: skip
        for name, key in grads.items():
            grad = scores.grad if name == "event_logits" else outputs[name].grad
            torch.testing.assert_close(grad.reshape(expected[key].shape), expected[key], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_release_protocol_accuracy_is_the_mean_of_batch_accuracies(loss_ref, script):
    ref = loss_ref[script]["eval"]
    from dgsct_cli.tasks.base import get_task

    task = get_task(SCRIPTS[script])
    ev = FewShotEvaluator(task.metric, 28, averaging="batch_mean", llp_rule="lowest", no_event="class0")
    for b in ref["batches"]:
        n = b["GT"].shape[0]
        ev.update({"event_logits": b["event_scores"].view(n, 10, -1)}, _batch(b["GT"]))
    torch.testing.assert_close(torch.tensor([ev.compute()["accuracy"]]), ref["mean_acc"])


def test_default_protocol_scoring_on_hand_made_cases():
    def scores(*winners, classes=4):
        out = torch.zeros(len(winners), 10, classes)
        for i, w in enumerate(winners):
            out[i, :, w] = 1.0
        return {"event_logits": out}

    # LLP: a prediction counts when it is any true class ("any"); the release wants the lowest.
    labels = torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 0]])
    for rule, expected in (("any", 100.0), ("lowest", 50.0)):
        ev = FewShotEvaluator("video", None, llp_rule=rule)
        ev.update(scores(2, 1), {"labels": labels})
        assert ev.compute()["accuracy"] == expected
    # AVE video accuracy: a video without an event is skipped, or class 0 as the release counts it.
    seg = torch.tensor([[3, 3, 1, 1, 3, 3, 3, 3, 3, 3], [3] * 10])
    for no_event, (acc, counted) in (("skip", (100.0, 1)), ("class0", (100.0, 2))):
        ev = FewShotEvaluator("video", 3, no_event=no_event)
        ev.update(scores(1, 0), {"segment_labels": seg})
        assert (ev.compute()["accuracy"], ev.compute()["num_counted"]) == (acc, counted)
    # Segment accuracy with uneven batches: global (7/12) vs the mean of batch accuracies.
    ev_g, ev_b = FewShotEvaluator("segment", 3), FewShotEvaluator("segment", 3, averaging="batch_mean")
    batches = [
        (torch.tensor([[0] * 10]), torch.tensor([[0] * 5 + [1] * 5])),
        (torch.tensor([[2] * 10] * 2), torch.tensor([[2] * 10, [1] * 10])),
    ]
    for pred, seg in batches:
        out = torch.nn.functional.one_hot(pred, 4).float()
        for ev in (ev_g, ev_b):
            ev.update({"event_logits": out}, {"segment_labels": seg})
    assert ev_g.compute()["accuracy"] == pytest.approx(100 * 15 / 30)
    assert ev_b.compute()["accuracy"] == pytest.approx(50.0)


def test_logit_fusion_rules_match_the_release(loss_ref):
    f = loss_ref["fusion"]
    torch.testing.assert_close(
        fuse_logits(f["logits_v"], f["logits_a"], "sum", (2.0, 2.0)), f["event_scores"]
    )
    z = torch.load(REF / "zeroshot.pt", weights_only=True)["fusion_zero_shot"]
    got = fuse_logits(z["logits_v"], z["logits_a"], "self_weighted")
    # Unguarded as released: Lv + La = 0 gives inf, both 0 gives nan.
    torch.testing.assert_close(got, z["event_scores"], equal_nan=True, rtol=1e-5, atol=1e-6)
    assert torch.isnan(got).any() and torch.isinf(got).any()


# -- K-shot sets on the real annotation files ------------------------------------------------------


def test_kshot_sets_on_the_real_annotation_files():
    from dgsct_cli.data.ave import read_ave_annotations
    from dgsct_cli.data.avvp import AVVP_CLASSES, read_llp_annotations
    from dgsct_cli.data.fewshot import kshot_indices

    ref = torch.load(REF / "kshot.pt", weights_only=True)
    class_names, splits = read_ave_annotations(DATA / "ave")
    train = splits["train"]
    classes = [[class_names.index(r.category)] for r in train]
    llp = read_llp_annotations(DATA / "avvp")["train"]
    llp_classes = [[AVVP_CLASSES.index(x) for x in row.labels] for row in llp]
    for k in (1, 2, 4, 8, 16):
        chosen = [train[i] for i in kshot_indices(classes, k, 28)]
        assert len(chosen) == 28 * k
        for script in ("main_AVE.py", "main_AVE_class.py"):
            r = ref[f"{script}/K{k}"]
            assert [c.video_id for c in chosen] == r["video_id"]
            assert [c.category for c in chosen] == r["category"]
            assert [c.start for c in chosen] == r["start_time"].tolist()
        picked = [llp[i] for i in kshot_indices(llp_classes, k, 25, single_label_only=True)]
        r = ref[f"main_LLP_class.py/K{k}"]
        assert len(picked) == 24 * k and [p.filename for p in picked] == r["filename"]
        assert all(len(p.labels) == 1 for p in picked) and "Speech" not in {p.labels[0] for p in picked}


def test_kshot_on_a_cache_keeps_the_first_k_per_class(tmp_path):
    from dgsct_cli.data.fewshot import kshot_indices, sample_classes

    samples = [{"targets": {"event_label": [c]}} for c in [1, 0, 1, 1, 0, 2]]
    classes = [sample_classes(s, 3) for s in samples]
    assert kshot_indices(classes, 2, 3) == [1, 4, 0, 2, 5]
    multi = [sample_classes({"targets": {"labels": v}}, None) for v in ([1, 0], [1, 1], [0, 1])]
    assert kshot_indices(multi, 1, 2, single_label_only=True) == [0, 2]
    with pytest.raises(ValueError, match="shots must be >= 1"):
        kshot_indices(classes, 0, 3)


# -- prompts and tokenizers ---------------------------------------------------------------------------


def test_prompts_and_tokens_match_the_release(model_ref):
    for setting, names, background in (
        ("AVE_loc", (DATA / "ave" / "categories.txt").read_text().splitlines(), True),
        ("LLP_class", __import__("dgsct_cli.data.avvp", fromlist=["AVVP_CLASSES"]).AVVP_CLASSES, False),
    ):
        text = model_ref[setting]["text"]
        names = [*names, "background"] if background else list(names)
        assert clip_prompts(names, 4) == text["clip_prompts"]
        assert clap_prompts(names) == text["clap_prompts"]
        assert torch.equal(clip_tokenize(text["clip_prompts"]), text["clip_tokenized_prompts"])
        # The release's RoBERTa tokenizer ran on the tiny vocabulary: ours gives the same ids.
        tok = load_roberta_tokenizer(REF / "tiny_roberta", 277)
        ids = clap_tokenize(text["clap_prompts"], tok, 77)
        assert torch.equal(ids.input_ids, text["clap_input_ids"])
        assert torch.equal(ids.attention_mask, text["clap_attention_mask"])


def test_tokenizer_files_are_checked(tmp_path):
    with pytest.raises(
        ValueError, match=r"vocab.json: 277 entries, but the CLAP text branch has a 50,265-token"
    ):
        load_roberta_tokenizer(REF / "tiny_roberta", 50265)
    with pytest.raises(ValueError, match="model.text.tokenizer is not set"):
        load_roberta_tokenizer(None, 50265)
    (tmp_path / "vocab.json").write_text("{}")
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'merges.txt'}: not found")):
        load_roberta_tokenizer(tmp_path, 50265)
    with pytest.raises(ValueError, match="tokenizer folder not found"):
        load_roberta_tokenizer(tmp_path / "nope", 50265)
    # The explicit byte-level tokenizer of tiny random models: 256 bytes + 5 special tokens.
    assert len(load_roberta_tokenizer("byte-level", 261)) == 261


# -- files in the real layouts, through the production loaders -----------------------------------------


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    return write_tiny_files(tmp_path_factory.mktemp("fewshot-files"))


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("torchscript", [False, True])
def test_tiny_clip_clap_roberta_files_load_and_the_model_runs(tmp_path, torchscript):
    from dgsct_cli.factory import build_model

    files = write_tiny_files(tmp_path, torchscript=torchscript)
    recipe = load_recipe("fewshot-ave", tiny_overrides(files))
    torch.manual_seed(0)
    model = build_model(recipe).eval()
    clip = torch.load(files["clip"], weights_only=True) if not torchscript else None
    if clip is not None:
        assert torch.equal(model.encoder.visual.conv1.weight, clip["visual.conv1.weight"])
        assert torch.equal(model.encoder.text["clip"].token_embedding.weight, clip["token_embedding.weight"])
    clap = torch.load(files["clap"], weights_only=True)["state_dict"]
    assert torch.equal(
        model.encoder.audio.logmel_extractor.melW, clap["module.audio_branch.logmel_extractor.melW"]
    )
    assert model.head.clap_scale().item() == pytest.approx(1.5)  # raw, as released
    assert model.head.clip_scale().item() == pytest.approx(torch.tensor(2.0).exp().item())
    frames, audio = torch.randn(2, 10, 3, 32, 32), torch.randn(2, 10, 32000) * 0.1
    with torch.no_grad():
        out = model(frames=frames, audio=audio)
    assert out["event_logits"].shape == (2, 10, 29) and out["logits_audio_image"].shape == (2, 2)
    torch.testing.assert_close(out["event_logits"], 2 * out["visual_logits"] + 2 * out["audio_logits"])
    assert model.head.class_names[-1] == "background"


def _release_layout(model) -> dict[str, torch.Tensor]:
    """Our tiny model's weights under the release's MMIL_Net keys, with its dead modules."""
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith("encoder.visual."):
            state["ViT." + key[len("encoder.visual.") :]] = value
        elif key.startswith("encoder.text.clip."):
            rest = key[len("encoder.text.clip.") :]
            state[rest if rest in ("token_embedding.weight", "logit_scale") else "text_encoder." + rest] = (
                value
            )
        elif key.startswith("encoder.text.clap.roberta."):
            state["clap_text_encoder.text_branch." + key[len("encoder.text.clap.roberta.") :]] = value
        elif key.startswith("encoder.text.clap.text_projection."):
            state["clap_text_encoder." + key[len("encoder.text.clap.") :]] = value
        elif key.startswith("encoder.text.clap.logit_scale"):
            continue  # not in the release's state dict (a plain tensor attribute there)
        elif key.startswith("encoder.audio."):
            parts = key[len("encoder.audio.") :].split(".")
            if parts[0] == "layers" and parts[2] == "downsample":
                parts[1] = str(int(parts[1]) - 1)
            state["htsat." + ".".join(parts)] = value
        elif key.startswith("encoder."):
            state[key[len("encoder.") :]] = value
        else:
            state[key[len("head.") :]] = value
    n = len(model.head.class_names)
    g = torch.Generator().manual_seed(5)
    state.update({
        "prompt_learner.token_prefix": torch.randn(n, 1, 64, generator=g),
        "prompt_learner.token_suffix": torch.randn(n, 15, 64, generator=g),
        "prompt_learner.meta_net.linear1.weight": torch.randn(4, 32, generator=g),
        "CMBS.localize_module.classifier.weight": torch.randn(28, 8, generator=g),
        "audio_adapter.audio_gated.0.weight": torch.randn(1, 8, generator=g),
        "vis_adapter_blocks_p1.0.fc_caption.weight": torch.randn(4, 4, generator=g),
        "clap_text_encoder.text_transform.sequential.0.weight": torch.randn(4, 4, generator=g),
        "clap_text_encoder.text_branch.embeddings.position_ids": torch.arange(40)[None],
        "htsat.tscam_conv.weight": torch.randn(5, 4, 2, 3, generator=g),
        "htsat.layers.0.blocks.0.attn.relative_position_index": torch.zeros(16, 16, dtype=torch.long),
    })  # fmt: skip
    return state


@pytest.mark.usefixtures("one_thread")
def test_a_release_layout_state_dict_with_random_values_loads_strictly_and_runs(tiny_files):
    from dgsct_cli.convert import detect_release_task, load_official_checkpoint
    from dgsct_cli.factory import build_model
    from dgsct_cli.models.weights import CheckpointError

    recipe = load_recipe("fewshot-ave", tiny_overrides(tiny_files))
    torch.manual_seed(3)
    source = build_model(recipe, load_encoder_weights=False)
    with torch.no_grad():  # random values everywhere, open gates
        for p in source.parameters():
            p.copy_(torch.randn_like(p) * 0.05)
        for name in ("logit_scale",):
            getattr(source.encoder.text["clip"], name).fill_(1.0)
    state = _release_layout(source)
    state = {"module." + k: v for k, v in state.items()}  # as saved from DataParallel
    assert detect_release_task(state) == "fewshot-ave"  # not AVE, whose head the model also carries
    for rows, task in ((28, "fewshot-ave-cls"), (25, "fewshot-llp-cls"), (142, "vggsound40k")):
        other = {**state, "module.prompt_learner.token_prefix": torch.zeros(rows, 1, 64)}
        assert detect_release_task(other) == task  # the prompts' class count names the setting
    cfg = recipe.model
    model = load_official_checkpoint(
        "fewshot-ave", state, cfg, clap=tiny_files["clap"], tokenizer=tiny_files["tokenizer"]
    )
    ours = {k: v for k, v in model.state_dict().items() if not k.startswith("encoder.text.clap.logit_scale")}
    expected = source.state_dict()
    for key, value in ours.items():
        assert torch.equal(value, expected[key]), key
    clap = torch.load(tiny_files["clap"], weights_only=True)["state_dict"]
    assert model.encoder.text["clap"].logit_scale_a.item() == clap["module.logit_scale_a"].item()
    with torch.no_grad():
        out = model(frames=torch.randn(1, 10, 3, 32, 32), audio=torch.randn(1, 10, 32000) * 0.1)
    assert torch.isfinite(out["event_logits"]).all() and out["event_logits"].shape == (1, 10, 29)
    # Strict: a missing tensor is named; a file of another setting is refused.
    broken = dict(state)
    del broken["module.clip_adapter.fc.0.weight"]
    with pytest.raises(CheckpointError, match=r"missing key\(s\): head.clip_adapter.fc.0.weight"):
        load_official_checkpoint("fewshot-ave", broken, cfg, clap=tiny_files["clap"])
    with pytest.raises(
        CheckpointError, match="this is a FEWSHOT-AVE release checkpoint, expected FEWSHOT-LLP-CLS"
    ):
        load_official_checkpoint(
            "fewshot-llp-cls", state, load_recipe("fewshot-llp-cls", tiny_overrides(tiny_files)).model
        )
    with pytest.raises(ValueError, match="no CLAP logit scales"):
        load_official_checkpoint(
            "fewshot-ave",
            state,
            load_recipe(
                "fewshot-ave",
                [f"model.text.tokenizer={tiny_files['tokenizer']}", *tiny_overrides(tiny_files)[3:]],
            ).model,
        )
    assert TINY_CLIP["width"] % 64 == 0


# -- the full-size model against the release's forward --------------------------------------------


def _release_full_state(ref: dict, clap_own: set[str]) -> dict[str, torch.Tensor]:
    """The release's few-shot state dict rebuilt from the detfill recipe of the reference
    (tests/fixtures/README.md); modules our loader drops by name get 1-element stand-ins."""
    import math

    from dgsct_cli.tasks.fewshot import FEWSHOT_UNUSED_RELEASE_KEYS

    r = ref["AVE_loc"]
    state = {}
    for key, shape in r["state_dict_shapes"].items():
        if any(re.search(p, key) for p in FEWSHOT_UNUSED_RELEASE_KEYS):
            state[key] = torch.zeros(shape if "token_" in key else [1])  # prefix rows tell the setting
            continue
        source = r["weight_source"][key]
        if source == "own":
            t = detfill.fill(key, shape)
        elif source.startswith("clip:"):  # the OpenAI file is fp16
            t = detfill.fill(source[5:], shape).half().float()
        else:
            name = source[5:]
            if name == "audio_branch.logmel_extractor.melW":
                t = r["frontend"]["melW"]
            elif "spectrogram_extractor" in name:  # torchlibrosa's kernels: DFT rows x periodic Hann
                n = torch.arange(1024, dtype=torch.float64)
                k = torch.arange(513, dtype=torch.float64)[:, None]
                angle, window = (
                    2 * math.pi * k * n / 1024,
                    torch.hann_window(1024, periodic=True, dtype=torch.float64),
                )
                t = (torch.cos(angle) * window if "real" in name else -torch.sin(angle) * window).float()[
                    :, None
                ]
            elif name in clap_own:
                t = torch.zeros(shape)  # buffers our model recomputes
            else:
                t = detfill.fill(name, shape)
        if key in r["state_dict_dtypes"]:
            t = t.to(getattr(torch, r["state_dict_dtypes"][key][len("torch.") :]))
        state[key] = t
    return state


@pytest.mark.slow
def test_full_size_fewshot_model_matches_the_release_forward(model_ref, tmp_path):
    """``load_official_checkpoint("fewshot-ave", state_dict, clap=..., tokenizer=...)`` on the
    release's state dict (detfill weights) gives the release's encoders, logits and scores."""
    sys.path.insert(0, str(REF))
    import make_inputs

    from dgsct_cli.convert import load_official_checkpoint

    state = _release_full_state(model_ref, set(model_ref["sources"]["clap_keys_with_own_values"]))
    # The CLAP file supplies what the state dict lacks: the raw logit scales.
    clap = {f"module.{k}": detfill.fill(k, []) for k in ("logit_scale_a", "logit_scale_t")}
    torch.save(
        {"state_dict": {**clap, "module.audio_branch.bn0.weight": torch.ones(64)}}, tmp_path / "clap.pt"
    )
    model = load_official_checkpoint("fewshot-ave", state, clap=tmp_path / "clap.pt")
    del state
    ref = model_ref["AVE_loc"]
    # The reference's RoBERTa ids come from a tiny vocabulary: feed them as they are.
    model.head.set_clap_tokens(ref["text"]["clap_input_ids"], ref["text"]["clap_attention_mask"])
    image, wave = make_inputs.release_loader(*make_inputs.make_inputs(2024))
    taps = {}
    for name in (
        "audio_adapter_blocks_p1",
        "vis_adapter_blocks_p1",
        "audio_adapter_blocks_p2",
        "vis_adapter_blocks_p2",
    ):
        for i, adapter in enumerate(getattr(model.encoder, name)):
            adapter.register_forward_hook(
                lambda m, a, out, key=f"{name}.{i}": taps.__setitem__(key, out[0][:2].mean(1))
            )
    with torch.no_grad():
        out = model(frames=image, audio=wave)
        logmel = model.encoder.audio.compute_log_mel(wave[0, :1])[0, 0]

    # Float drift through 12 paired blocks of random weights grows with depth: up to 2.6e-5 from the
    # reference with this machine's AVX-512 kernels, 3.4e-4 with torch's scalar ones
    # (tests/fixtures/README.md, "Portability"). A 1% error in any scale, or a swapped input,
    # moves these values (up to 0.6-16 per tensor) by more than 1e-3.
    def close(ours, theirs, atol=1e-3):
        torch.testing.assert_close(ours.reshape(theirs.shape), theirs, rtol=1e-4, atol=atol)

    f, logits, scales = ref["features"], ref["logits"], ref["logit_scales"]
    close(model.head.clip_scale(), scales["clip_logit_scale_exp"])  # exp of the file's, not 100
    close(model.head.clap_scale(), scales["clap_logit_scale_a_raw"])
    close(logmel, f["logmel_seg0"], atol=1e-4)  # the file's (not a recomputed) mel matrix (3e-5 apart)
    close(out["visual_features"][0], f["clip_visual"])
    close(out["audio_features"][0], f["clap_audio"])
    for i, pair in ref["per_pair"].items():
        for key, value in pair.items():
            if key.endswith("_out_mean"):
                close(taps[f"{key[: -len('_out_mean')]}.{i}"], value)
    with torch.no_grad():
        close(model.head.clip_text_features(), f["clip_text"])
        close(model.head.clap_text_features(), f["clap_text"])
    close(out["visual_logits"][0], logits["logits_v"])
    close(out["audio_logits"][0], logits["logits_a"])
    close(out["event_logits"][0], ref["outputs"]["event_scores"])
    close(out["logits_audio_image"], ref["outputs"]["logits_audio_image"])
    close(out["logits_image_audio"], ref["outputs"]["logits_image_audio"])
    # LLP's 25 classes: the same weights with other prompts (only the text side differs).
    from dgsct_cli.data.avvp import AVVP_CLASSES

    llp = model_ref["LLP_class"]
    model.head.set_classes(list(AVVP_CLASSES), background=False)
    assert torch.equal(model.head.clip_tokens, llp["text"]["clip_tokenized_prompts"])
    model.head.set_clap_tokens(llp["text"]["clap_input_ids"], llp["text"]["clap_attention_mask"])
    with torch.no_grad():
        close(model.head.clip_text_features(), llp["features"]["clip_text"])
        close(model.head.clap_text_features(), llp["features"]["clap_text"])
