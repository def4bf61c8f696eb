#!/usr/bin/env bash
# Makes .e2epack/ (ignored by git), what benchmarks/e2e/run.py and tests/test_cosyvoice_e2e_gpu.py
# need on a GPU machine that reaches no index, from a machine that reaches PyPI and has the fetched
# upstream repositories:
#   src/cosyvoice/  FunAudioLLM/CosyVoice at $COSYVOICE_COMMIT: the package's modules (without
#                   bin/, dataset/, vllm/ and the tokenizer's tiktoken asset, which the LLM, flow and
#                   HiFT stages never import)
#   src/matcha/     shivammehta25/Matcha-TTS at the commit CosyVoice's third_party/Matcha-TTS
#                   submodule pins ($MATCHA_COMMIT)
#   src/conf/       CosyVoice's own yaml configs: cosyvoice2.yaml, cosyvoice3.yaml
#                   (examples/libritts/*/conf, the layout of the released models' yaml)
#   src/UPSTREAM    the two commits
#   whl/            the pure-Python packages those modules import that the GPU image lacks, for
#                   Python $GPU_PYTHON (default 3.12), at upstream's pinned versions where those
#                   exist as wheels (requirements.txt), else the newest that works; ~18 MB in all
# Usage, from the repo root:
#   COSYVOICE_GIT=<CosyVoice git dir> MATCHA_GIT=<Matcha-TTS git dir> bash benchmarks/e2e/make_pack.sh
set -euo pipefail
COSYVOICE_GIT=${COSYVOICE_GIT:?the CosyVoice git directory (a clone or mirror)}
MATCHA_GIT=${MATCHA_GIT:?the Matcha-TTS git directory (a clone or mirror)}
COSYVOICE_COMMIT=${COSYVOICE_COMMIT:-ace7c47f41bbd303aa6bf1ea80e6f9fbd595cd40}
MATCHA_COMMIT=$(git -C "$COSYVOICE_GIT" ls-tree "$COSYVOICE_COMMIT" third_party/Matcha-TTS | awk '{print $3}')
OUT=${E2E_PACK:-.e2epack}
TMP=$OUT.tmp
rm -rf "$TMP" && mkdir -p "$TMP/src/conf" "$TMP/whl" "$TMP/x"
git -C "$COSYVOICE_GIT" archive "$COSYVOICE_COMMIT" cosyvoice examples/libritts/cosyvoice2/conf/cosyvoice2.yaml \
  examples/libritts/cosyvoice3/conf/cosyvoice3.yaml | tar -x -C "$TMP/x"
rm -rf "$TMP"/x/cosyvoice/{bin,dataset,vllm,tokenizer/assets}
mv "$TMP/x/cosyvoice" "$TMP/src/"
mv "$TMP"/x/examples/libritts/cosyvoice2/conf/cosyvoice2.yaml "$TMP"/x/examples/libritts/cosyvoice3/conf/cosyvoice3.yaml "$TMP/src/conf/"
git -C "$MATCHA_GIT" archive "$MATCHA_COMMIT" matcha | tar -x -C "$TMP/src"
rm -rf "$TMP/x"
printf 'FunAudioLLM/CosyVoice %s\nshivammehta25/Matcha-TTS %s\n' "$COSYVOICE_COMMIT" "$MATCHA_COMMIT" > "$TMP/src/UPSTREAM"
PLAT="--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
# hyperpyyaml (the configs), omegaconf (the flow's cfm_params), diffusers + conformer (Matcha's
# decoder blocks, CosyVoice2's flow), x-transformers + einx + loguru + frozendict (CosyVoice3's DiT),
# ruamel.yaml (hyperpyyaml). omegaconf 2.4 instead of upstream's 2.3: 2.3 needs antlr4 4.9, which
# has no wheel. transformers 4.51.3 (upstream's pin) with the tokenizers and huggingface-hub it
# accepts: under transformers 5 (the GPU image's), Qwen2Encoder.forward_one_step's one-column
# attention mask changes what each decode step attends to, so upstream's own loop decodes other
# tokens than its model gives (docs/cosyvoice.md, "End to end"). Installed with --no-deps, so the
# list is complete on its own.
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "${GPU_PYTHON:-3.12}" --implementation cp $PLAT \
  -d "$TMP/whl" hyperpyyaml==1.2.3 "ruamel.yaml==0.18.17" omegaconf==2.4.0 diffusers==0.29.0 conformer==0.3.2 \
  x-transformers==2.11.24 einx==0.4.3 loguru==0.7.3 frozendict==2.5.1 \
  transformers==4.51.3 tokenizers==0.21.4 huggingface-hub==0.36.2
rm -rf "$OUT" && mv "$TMP" "$OUT"
GITDIR=$(git rev-parse --git-common-dir)
grep -qx "/$OUT/" "$GITDIR/info/exclude" 2>/dev/null || echo "/$OUT/" >> "$GITDIR/info/exclude"
du -sh "$OUT"
