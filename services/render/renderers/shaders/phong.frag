#version 330 core
// Blinn-Phong variant of pyrender's mesh.frag (same structs, uniforms and inputs, so
// pyrender binds it unchanged). Diffuse term identical to pyrender's PBR diffuse
// (c_diff / pi * n.l * radiance); specular: normalised Blinn-Phong whose exponent comes
// from the material roughness. About half the per-fragment cost of the GGX BRDF in
// llvmpipe, which dominates CPU rendering time. No shadows, textures or IBL (unused here).
// The renderer defines N_DIRECTIONAL_LIGHTS, N_POINT_LIGHTS and N_SPOT_LIGHTS (the scene's exact
// counts): loops with compile-time bounds are unrolled, absent light kinds compile away. Loops
// bounded by a uniform cost llvmpipe about twice as much per fragment.

struct SpotLight {
    vec3 color;
    float intensity;
    float range;
    vec3 position;
    vec3 direction;
    float light_angle_scale;
    float light_angle_offset;

    #ifdef SPOT_LIGHT_SHADOWS
    sampler2D shadow_map;
    mat4 light_matrix;
    #endif
};

struct DirectionalLight {
    vec3 color;
    float intensity;
    vec3 direction;

    #ifdef DIRECTIONAL_LIGHT_SHADOWS
    sampler2D shadow_map;
    mat4 light_matrix;
    #endif
};

struct PointLight {
    vec3 color;
    float intensity;
    float range;
    vec3 position;

    #ifdef POINT_LIGHT_SHADOWS
    samplerCube shadow_map;
    #endif
};

struct Material {
    vec3 emissive_factor;

#ifdef USE_METALLIC_MATERIAL
    vec4 base_color_factor;
    float metallic_factor;
    float roughness_factor;
#endif

#ifdef USE_GLOSSY_MATERIAL
    vec4 diffuse_factor;
    vec3 specular_factor;
    float glossiness_factor;
#endif

#ifdef HAS_NORMAL_TEX
    sampler2D normal_texture;
#endif
#ifdef HAS_OCCLUSION_TEX
    sampler2D occlusion_texture;
#endif
#ifdef HAS_EMISSIVE_TEX
    sampler2D emissive_texture;
#endif
#ifdef HAS_BASE_COLOR_TEX
    sampler2D base_color_texture;
#endif
#ifdef HAS_METALLIC_ROUGHNESS_TEX
    sampler2D metallic_roughness_texture;
#endif
#ifdef HAS_DIFFUSE_TEX
    sampler2D diffuse_texture;
#endif
#ifdef HAS_SPECULAR_GLOSSINESS_TEX
    sampler2D specular_glossiness;
#endif
};

uniform Material material;
uniform PointLight point_lights[MAX_POINT_LIGHTS];
uniform int n_point_lights;
uniform DirectionalLight directional_lights[MAX_DIRECTIONAL_LIGHTS];
uniform int n_directional_lights;
uniform SpotLight spot_lights[MAX_SPOT_LIGHTS];
uniform int n_spot_lights;
uniform vec3 cam_pos;
uniform vec3 ambient_light;

in vec3 frag_position;
#ifdef NORMAL_LOC
in vec3 frag_normal;
#endif
#ifdef TEXCOORD_0_LOC
in vec2 uv_0;
#endif
#ifdef TEXCOORD_1_LOC
in vec2 uv_1;
#endif
#ifdef COLOR_0_LOC
in vec4 color_multiplier;
#endif

out vec4 frag_color;

const float PI = 3.141592653589793;
const float min_roughness = 0.04;

vec3 shade(vec3 n, vec3 v, vec3 l, vec3 c_diff, vec3 f0, float shininess, vec3 radiance)
{
    float nl = clamp(dot(n, l), 0.0, 1.0);
    vec3 h = normalize(l + v);
    float nh = clamp(dot(n, h), 0.0, 1.0);
    vec3 specular = f0 * ((shininess + 8.0) / (8.0 * PI)) * pow(nh, shininess);
    return nl * radiance * (c_diff / PI + specular);
}

void main()
{
    vec4 color = vec4(vec3(0.0), 1.0);
#ifdef USE_METALLIC_MATERIAL
    float roughness = clamp(material.roughness_factor, min_roughness, 1.0);
    float metallic = clamp(material.metallic_factor, 0.0, 1.0);
    vec4 base_color = material.base_color_factor;
    vec3 c_diff = mix(vec3(0.0), base_color.rgb * (1.0 - min_roughness), 1.0 - metallic);
    vec3 f0 = mix(vec3(min_roughness), base_color.rgb, metallic);
    // Blinn-Phong exponent matching a Beckmann lobe of this roughness (alpha = roughness^2)
    float alpha = roughness * roughness;
    float shininess = clamp(2.0 / (alpha * alpha) - 2.0, 1.0, 4096.0);

#ifdef NORMAL_LOC
    vec3 n = normalize(frag_normal);
#else
    vec3 n = normalize(cam_pos - frag_position);
#endif
    vec3 v = normalize(cam_pos - frag_position);
    // two-sided: light the side facing the camera
    if (dot(n, v) < 0.0) {
        n = -n;
    }

#if N_DIRECTIONAL_LIGHTS > 0
    for (int i = 0; i < N_DIRECTIONAL_LIGHTS; i++) {
        vec3 l = normalize(-1.0 * directional_lights[i].direction);
        vec3 radiance = directional_lights[i].intensity * directional_lights[i].color;
        color.xyz += shade(n, v, l, c_diff, f0, shininess, radiance);
    }
#endif
#if N_POINT_LIGHTS > 0
    for (int i = 0; i < N_POINT_LIGHTS; i++) {
        vec3 to_light = point_lights[i].position - frag_position;
        float dist2 = dot(to_light, to_light);
        vec3 radiance = point_lights[i].intensity / dist2 * point_lights[i].color;
        color.xyz += shade(n, v, normalize(to_light), c_diff, f0, shininess, radiance);
    }
#endif
#if N_SPOT_LIGHTS > 0
    for (int i = 0; i < N_SPOT_LIGHTS; i++) {
        vec3 to_light = spot_lights[i].position - frag_position;
        vec3 l = normalize(to_light);
        float cd = clamp(dot(spot_lights[i].direction, -l), 0.0, 1.0);
        float attenuation = clamp(cd * spot_lights[i].light_angle_scale + spot_lights[i].light_angle_offset, 0.0, 1.0);
        attenuation = attenuation * attenuation * spot_lights[i].intensity / dot(to_light, to_light);
        color.xyz += shade(n, v, l, c_diff, f0, shininess, attenuation * spot_lights[i].color);
    }
#endif
    color.xyz += base_color.xyz * ambient_light;
    color.xyz += material.emissive_factor * material.emissive_factor;
#ifdef COLOR_0_LOC
    color *= color_multiplier;
#endif
    frag_color = clamp(vec4(pow(color.xyz, vec3(1.0 / 2.2)), color.a * base_color.a), 0.0, 1.0);
#else
    frag_color = vec4(1.0, 0.0, 1.0, 1.0);  // only metallic-roughness materials are used here
#endif
}
