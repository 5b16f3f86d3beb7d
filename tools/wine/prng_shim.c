/* bcryptprimitives.dll stand-in for Wine 8.0, which lacks ProcessPrng.
 *
 * cryptography's Rust module imports bcryptprimitives.dll!ProcessPrng (the Windows 10+ RNG
 * entry point). This DLL, placed next to python.exe, provides it on top of
 * BCryptGenRandom with the system-preferred RNG. Used only by the Wine test tier. */
#include <windows.h>
#include <bcrypt.h>

BOOL WINAPI ProcessPrng(PBYTE pbData, SIZE_T cbData)
{
    while (cbData > 0) {
        ULONG chunk = cbData > 0x40000000 ? 0x40000000 : (ULONG)cbData;
        if (BCryptGenRandom(NULL, pbData, chunk, BCRYPT_USE_SYSTEM_PREFERRED_RNG) != 0)
            return FALSE;
        pbData += chunk;
        cbData -= chunk;
    }
    return TRUE;
}
