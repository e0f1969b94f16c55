// SOPHIA's own user-assigned managed identity: the one identity the Function App uses for the
// Functions host's storage, Cosmos DB, Key Vault and the refresh queue. It gets no role on any
// company's resources (those are reached with each company's own identity: company.bicep).

@description('Name of the identity.')
param name string

param location string
param tags object = {}

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: name
  location: location
  tags: tags
}

output id string = identity.id
output name string = identity.name
output clientId string = identity.properties.clientId
output principalId string = identity.properties.principalId
