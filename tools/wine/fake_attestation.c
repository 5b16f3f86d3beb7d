/* A stand-in AttestationClientLib.dll for the Wine tier (the real one is not redistributable).
 *
 * Same exports and calling convention (cdecl, ANSI) as the real library; behaviour chosen so
 * tests can check msicert_native's marshalling:
 *   - InitAttestationLib refuses a NULL log function (-8, like the real DLL) and logs once;
 *   - AttestKeyGuardImportKey needs Init, a non-zero key handle, endpoint and client id;
 *     endpoint "https://fail.invalid" returns -5; otherwise the token is
 *     "fake-jwt.<client_id>.<auth_token or ->.<client_payload or ->" (malloc'd);
 *   - FreeAttestationToken frees it; UninitAttestationLib resets the state. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <windows.h>
#include <ncrypt.h>

typedef void (*LogFunc)(void *ctx, const char *tag, int level, const char *func, int line,
                        const char *msg);
typedef struct { LogFunc Log; void *Ctx; } AttestationLogInfo;

static int initialized;

__declspec(dllexport) int InitAttestationLib(AttestationLogInfo *info)
{
    if (info == NULL || info->Log == NULL)
        return -8;
    info->Log(info->Ctx, "fake", 2, "InitAttestationLib", __LINE__, "initialized");
    initialized = 1;
    return 0;
}

__declspec(dllexport) int AttestKeyGuardImportKey(const char *endpoint, const char *auth_token,
                                                  const char *client_payload,
                                                  NCRYPT_KEY_HANDLE key, char **token,
                                                  const char *client_id)
{
    if (!initialized)
        return -1;
    if (endpoint == NULL || client_id == NULL || token == NULL)
        return -2;
    if (key == 0)
        return -3;
    if (strcmp(endpoint, "https://fail.invalid") == 0)
        return -5;
    size_t size = strlen(client_id) + 64 + (auth_token ? strlen(auth_token) : 0)
                  + (client_payload ? strlen(client_payload) : 0);
    *token = malloc(size);
    if (*token == NULL)
        return -4;
    snprintf(*token, size, "fake-jwt.%s.%s.%s", client_id, auth_token ? auth_token : "-",
             client_payload ? client_payload : "-");
    return 0;
}

__declspec(dllexport) void FreeAttestationToken(char *token)
{
    free(token);
}

__declspec(dllexport) void UninitAttestationLib(void)
{
    initialized = 0;
}
