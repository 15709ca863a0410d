// Vulkan-Hpp, plus the VK_EXT_layer_settings types where the installed headers predate them.
//
// llama.cpp's Vulkan backend (ggml-vulkan.cpp) always builds a vk::LayerSettingsCreateInfoEXT,
// to turn on the validation layer's best-practice checks in GGML_VULKAN_VALIDATE builds; it
// chains it into vkCreateInstance with zero effect otherwise. VK_EXT_layer_settings arrived in
// Vulkan headers 1.3.272, so Debian 12's (1.3.239) cannot compile that block; Debian 13's
// (1.4.309) can. scripts/cmake_args.py --vulkan puts this folder first on the C++ include path:
// only files that include <vulkan/vulkan.hpp> see this file, and where the real headers declare
// the extension (VK_EXT_layer_settings is defined) it adds nothing.
//
// The declarations follow the Vulkan registry's C layout of VkLayerSettingEXT and
// VkLayerSettingsCreateInfoEXT (sType 1000496000), so the chained struct is the real one.
#pragma once
#include_next <vulkan/vulkan.hpp>

#ifndef VK_EXT_layer_settings
#include <cstdint>
#include <vector>

namespace VULKAN_HPP_NAMESPACE {

enum class LayerSettingTypeEXT : int32_t {
    eBool32 = 0,
    eInt32 = 1,
    eInt64 = 2,
    eUint32 = 3,
    eUint64 = 4,
    eFloat32 = 5,
    eFloat64 = 6,
    eString = 7,
};

struct LayerSettingEXT {
    const char * pLayerName;
    const char * pSettingName;
    LayerSettingTypeEXT type;
    uint32_t valueCount;
    const void * pValues;
};

struct LayerSettingsCreateInfoEXT {
    explicit LayerSettingsCreateInfoEXT(const std::vector<LayerSettingEXT> & settings_)
        : settingCount(static_cast<uint32_t>(settings_.size())), pSettings(settings_.data()) {}

    StructureType sType = static_cast<StructureType>(1000496000);  // ..._LAYER_SETTINGS_CREATE_INFO_EXT
    const void * pNext = nullptr;
    uint32_t settingCount;
    const LayerSettingEXT * pSettings;
};

}  // namespace VULKAN_HPP_NAMESPACE
#endif
