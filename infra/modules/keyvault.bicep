// Key Vault in RBAC mode, with soft delete and purge protection: each instance's credential
// bundle (sophia-instance-<id>) and the service-token signing key (sophia-token-signing-key).
// The templates write no secret into it; SOPHIA does, through its identity.

param location string
param tags object = {}
param name string
@description('Principal id of SOPHIA\'s user-assigned identity.')
param sophiaPrincipalId string
@description('Tenant (directory) of the vault.')
param tenantId string = subscription().tenantId
@minValue(7)
@maxValue(90)
param softDeleteRetentionInDays int = 90

// Key Vault Secrets Officer: SOPHIA writes instance credentials (admin API) and, on first start,
// generates the signing key; reading them back is part of the role. No key or certificate rights.
var keyVaultSecretsOfficer = 'b86a8fe4-44ce-4948-aee5-eccb2c155cd7'

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: softDeleteRetentionInDays
    enablePurgeProtection: true
    enabledForDeployment: false
    enabledForDiskEncryption: false
    enabledForTemplateDeployment: false
    // checkov:skip=CKV_AZURE_189: as CKV_AZURE_109: reachable only with an Entra token and an RBAC role; private endpoints need VNet integration of the app
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      // checkov:skip=CKV_AZURE_109: a Flex Consumption app without VNet integration has no fixed outbound address to allow; every call needs an Entra token and the Secrets Officer role
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

resource sophiaSecrets 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, sophiaPrincipalId, keyVaultSecretsOfficer)
  scope: vault
  properties: {
    principalId: sophiaPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsOfficer)
  }
}

output uri string = vault.properties.vaultUri
output name string = vault.name
output id string = vault.id
