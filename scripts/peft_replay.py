"""What the PEFT replay fixture scripts share (make_dora_train_fixtures.py, make_pissa_fixtures.py,
make_trainable_tokens_fixtures.py, make_added_tokens_fixtures.py): saving an adapter as the fixtures keep
it, the AdamW steps they replay, and their provenance record. Imported from the scripts' folder."""

import json
import os
import sys

import peft
import torch
import transformers


def save_adapter(model, d, base_rel, **kwargs):
    """`model.save_pretrained(d)` without the card, the config naming `base_rel` and its targets sorted."""
    model.save_pretrained(d, **kwargs)
    os.remove(os.path.join(d, "README.md"))
    cfg_path = os.path.join(d, "adapter_config.json")
    cfg = json.load(open(cfg_path))
    cfg["base_model_name_or_path"] = base_rel
    cfg["target_modules"] = sorted(cfg["target_modules"])
    json.dump(cfg, open(cfg_path, "w"), indent=2, sort_keys=True)
    return cfg


def adamw_steps(model, ids, labels, steps, lr, weight_decay):
    """`steps` of torch's AdamW (betas (0.9, 0.999), eps 1e-8) on every trainable parameter; the losses."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr,
                            weight_decay=weight_decay, betas=(0.9, 0.999), eps=1e-8)
    return optimizer_steps(model, ids, labels, steps, opt)


def optimizer_steps(model, ids, labels, steps, opt):
    """`steps` of `opt` on the batch's next-token loss, the model in training mode; the losses."""
    model.train()
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = model(ids, labels=labels).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    return losses


def replay_meta(steps, lr, weight_decay, losses, **extra):
    """The golden.json "replay" record."""
    return {"steps": steps, "lr": lr, "weight_decay": weight_decay, "betas": [0.9, 0.999], "eps": 1e-8,
            "losses": losses, **extra}


def write_provenance(out, script, **extra):
    prov = {"script": script, "python": sys.version.split()[0], "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__, **extra}
    json.dump(prov, open(os.path.join(out, "provenance.json"), "w"), indent=2)
