// SPDX-License-Identifier: Apache-2.0
// A small driver of the real llama.cpp C API for the tests of the physical KV cap (tests/test_real_memory.py):
// what the command-line tools cannot do. The hook is configured by the ELASTICKV_* environment as everywhere.
//
//   ekv_probe restore  MODEL TEXT N_CTX N_PREFIX   save/restore of a sequence after evictions
//   ekv_probe parallel MODEL TEXT N_CTX N_SEQ N_TOKENS N_STEP   several sequences decoded side by side
//
// restore: decodes the first N_PREFIX tokens of TEXT as sequence 0 in batches of 64 (the hook evicts and frees
// cells), saves the sequence's state, decodes token N_PREFIX and keeps its logits (A). Then it clears the cache,
// decodes 128 other tokens (their own passes leave the hook's flags on cells), clears the cache again, restores the
// saved state into it and decodes token N_PREFIX again (B). Prints one JSON line: the largest |A - B| over the
// vocabulary, the argmax of each, and the cells used after the restore.
// parallel: N_SEQ sequences share the context (unified or not, as the context parameters say: LLAMA_KV_UNIFIED=1
// for one stream), each decodes N_TOKENS tokens of TEXT from its own offset, N_STEP tokens per sequence per
// llama_decode call. Prints one JSON line with each sequence's last position. Exit status 1 on any failure.
#include "llama.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(const char * what) {
    fprintf(stderr, "ekv_probe: %s\n", what);
    return 1;
}

static char * read_text(const char * path, long * n) {
    FILE * f = fopen(path, "rb");
    if (!f) {
        return NULL;
    }
    fseek(f, 0, SEEK_END);
    *n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char * buf = malloc(*n + 1);
    *n = (long) fread(buf, 1, *n, f);
    buf[*n] = 0;
    fclose(f);
    return buf;
}

// tokens [i0, i0+n) at positions [p0, p0+n) of sequence seq, in calls of at most step tokens; logits of the last one
static int decode_run(struct llama_context * ctx, const llama_token * t, int n, int p0, int seq, int step) {
    struct llama_batch b = llama_batch_init(step, 0, 1);
    for (int i = 0; i < n; i += step) {
        const int m = n - i < step ? n - i : step;
        b.n_tokens = m;
        for (int j = 0; j < m; ++j) {
            b.token[j]     = t[i + j];
            b.pos[j]       = p0 + i + j;
            b.n_seq_id[j]  = 1;
            b.seq_id[j][0] = seq;
            b.logits[j]    = i + j == n - 1;
        }
        if (llama_decode(ctx, b) != 0) {
            llama_batch_free(b);
            return 1;
        }
    }
    llama_batch_free(b);
    return 0;
}

static int argmax(const float * x, int n) {
    int k = 0;
    for (int i = 1; i < n; ++i) {
        k = x[i] > x[k] ? i : k;
    }
    return k;
}

int main(int argc, char ** argv) {
    if (argc < 6) {
        return fail("usage: ekv_probe restore MODEL TEXT N_CTX N_PREFIX | parallel MODEL TEXT N_CTX N_SEQ N_TOKENS N_STEP");
    }
    const int restore = strcmp(argv[1], "restore") == 0;
    const int n_ctx   = atoi(argv[4]);
    llama_backend_init();
    struct llama_model_params mp = llama_model_default_params();
    struct llama_model * model = llama_model_load_from_file(argv[2], mp);
    if (!model) {
        return fail("cannot load the model");
    }
    const struct llama_vocab * vocab = llama_model_get_vocab(model);
    long n_text = 0;
    char * text = read_text(argv[3], &n_text);
    if (!text) {
        return fail("cannot read the text");
    }
    const int cap = 1 << 20;
    llama_token * toks = malloc(sizeof(llama_token)*cap);
    const int n_tok = llama_tokenize(vocab, text, (int32_t) (n_text < 4000000 ? n_text : 4000000), toks, cap, true, false);
    if (n_tok <= 0) {
        return fail("cannot tokenize the text");
    }

    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx           = n_ctx;
    cp.n_threads       = 2;
    cp.n_threads_batch = 2;
    cp.flash_attn_type = getenv("PROBE_FA") ? LLAMA_FLASH_ATTN_TYPE_ENABLED : LLAMA_FLASH_ATTN_TYPE_DISABLED;

    if (restore) {
        const int n_prefix = atoi(argv[5]);
        if (n_prefix + 1 + 128 + n_prefix > n_tok) {
            return fail("the text is too short");
        }
        cp.n_batch = cp.n_ubatch = 64;
        cp.n_seq_max = 1;
        struct llama_context * ctx = llama_init_from_model(model, cp);
        if (!ctx) {
            return fail("cannot create the context");
        }
        const int n_vocab = llama_vocab_n_tokens(vocab);
        llama_memory_t mem = llama_get_memory(ctx);
        if (decode_run(ctx, toks, n_prefix, 0, 0, 64)) {
            return fail("decode of the prefix failed");
        }
        const size_t size = llama_state_seq_get_size(ctx, 0);
        unsigned char * state = malloc(size);
        if (llama_state_seq_get_data(ctx, state, size, 0) != size) {
            return fail("cannot save the sequence state");
        }
        if (decode_run(ctx, toks + n_prefix, 1, n_prefix, 0, 64)) {
            return fail("decode of the next token failed");
        }
        float * a = malloc(sizeof(float)*n_vocab);
        memcpy(a, llama_get_logits_ith(ctx, -1), sizeof(float)*n_vocab);

        llama_memory_clear(mem, true);
        if (decode_run(ctx, toks + 2*n_prefix + 1, 128, 0, 0, 64)) {
            return fail("decode of the other text failed");
        }
        llama_memory_clear(mem, true);
        if (llama_state_seq_set_data(ctx, state, size, 0) != size) {
            return fail("cannot restore the sequence state");
        }
        const int used = llama_memory_seq_pos_max(mem, 0);
        if (decode_run(ctx, toks + n_prefix, 1, n_prefix, 0, 64)) {
            return fail("decode after the restore failed");
        }
        const float * b = llama_get_logits_ith(ctx, -1);
        double dmax = 0.0, amax = 0.0;
        for (int i = 0; i < n_vocab; ++i) {
            dmax = fmax(dmax, fabs((double) a[i] - (double) b[i]));
            amax = fmax(amax, fabs((double) a[i]));
        }
        printf("{\"max_abs_diff\": %.9g, \"max_abs_logit\": %.9g, \"argmax_uninterrupted\": %d, \"argmax_restored\": %d, "
               "\"state_bytes\": %zu, \"pos_max_restored\": %d}\n", dmax, amax, argmax(a, n_vocab), argmax(b, n_vocab), size, used);
        llama_free(ctx);
    } else {
        if (argc < 8) {
            return fail("parallel needs N_SEQ N_TOKENS N_STEP");
        }
        const int n_seq = atoi(argv[5]), n_each = atoi(argv[6]), step = atoi(argv[7]);
        if (n_seq*n_each > n_tok) {
            return fail("the text is too short");
        }
        cp.n_batch = cp.n_ubatch = n_seq*step;
        cp.n_seq_max  = n_seq;
        cp.kv_unified = getenv("LLAMA_KV_UNIFIED") && atoi(getenv("LLAMA_KV_UNIFIED")) != 0;
        struct llama_context * ctx = llama_init_from_model(model, cp);
        if (!ctx) {
            return fail("cannot create the context");
        }
        struct llama_batch b = llama_batch_init(n_seq*step, 0, 1);
        for (int i = 0; i < n_each; i += step) {
            const int m = n_each - i < step ? n_each - i : step;
            b.n_tokens = 0;
            for (int s = 0; s < n_seq; ++s) {
                for (int j = 0; j < m; ++j) {
                    const int k = b.n_tokens++;
                    b.token[k]     = toks[s*n_each + i + j];
                    b.pos[k]       = i + j;
                    b.n_seq_id[k]  = 1;
                    b.seq_id[k][0] = s;
                    b.logits[k]    = j == m - 1;
                }
            }
            if (llama_decode(ctx, b) != 0) {
                return fail("decode failed");
            }
        }
        llama_memory_t mem = llama_get_memory(ctx);
        printf("{\"pos_max\": [");
        for (int s = 0; s < n_seq; ++s) {
            printf("%s%d", s ? ", " : "", llama_memory_seq_pos_max(mem, s));
        }
        printf("]}\n");
        llama_batch_free(b);
        llama_free(ctx);
    }
    llama_model_free(model);
    free(toks);
    free(text);
    return 0;
}
