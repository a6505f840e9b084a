// SPDX-License-Identifier: MIT
// ElasticKV: what the hook's own files share from the configuration (llama-elastickv-config.cpp) and no code
// outside the hook uses: the failure that names a variable and what it accepts, and the policy and mode names.
#pragma once

#include "llama-elastickv.h"

#include <string>

// Throws std::runtime_error "elastickv: NAME='VALUE' WHY; accepted: ..." with the variable's accepted values
// from LLAMA_ELASTICKV_VARS (std::logic_error if NAME is not declared there).
[[noreturn]] void llama_elastickv_fail(const char * name, const std::string & value, const std::string & why);

// The ELASTICKV_POLICY value of a policy ("?" if none).
const char * llama_elastickv_policy_name_of(llama_elastickv_policy p);

// The ELASTICKV_MODE value of a mode.
const char * llama_elastickv_mode_name(llama_elastickv_mode m);
