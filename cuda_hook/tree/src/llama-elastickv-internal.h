// SPDX-License-Identifier: MIT
// ElasticKV: what the hook's own files share from the configuration (llama-elastickv-config.cpp) and no code
// outside the hook uses: the failure that names a variable and what it accepts, the policy and mode names, and
// the backend a KV buffer lives on.
#pragma once

#include "llama-elastickv.h"

#include "ggml-backend.h"

#include <string>
#include <vector>

// Throws std::runtime_error "elastickv: NAME='VALUE' WHY; accepted: ..." with the variable's accepted values
// from LLAMA_ELASTICKV_VARS (std::logic_error if NAME is not declared there).
[[noreturn]] void llama_elastickv_fail(const char * name, const std::string & value, const std::string & why);

// The ELASTICKV_POLICY value of a policy ("?" if none).
const char * llama_elastickv_policy_name_of(llama_elastickv_policy p);

// The ELASTICKV_MODE value of a mode.
const char * llama_elastickv_mode_name(llama_elastickv_mode m);

// The backend of the context that runs the hook's ops on a buffer of this type (the KV buffer of a layer: the hook's
// own tensors go next to it): the device that owns that memory, the CPU for host memory, never an accelerator
// backend such as BLAS. Throws std::runtime_error naming the buffer type when none can (llama-elastickv.cpp).
ggml_backend_t llama_elastickv_backend_for(ggml_backend_buffer_type_t buft, const std::vector<ggml_backend_t> & backends);

// The device type of a backend (ACCEL for a backend without a device).
enum ggml_backend_dev_type llama_elastickv_dev_type(ggml_backend_t backend);
