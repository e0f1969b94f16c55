// Cosmos DB for NoSQL, serverless, Entra-only (disableLocalAuth): the database and every
// container SOPHIA uses, each partitioned by /tenantId (the company id), and a data-plane role
// assignment for SOPHIA's identity. SOPHIA checks this layout at start-up and refuses to run
// on anything else (src/store/cosmos/mod.rs, container_definitions).

param location string
param tags object = {}
param accountName string
param databaseName string = 'sophia'
@description('Principal id of SOPHIA\'s user-assigned identity.')
param sophiaPrincipalId string
@description('Default TTL of audit documents in days (SOPHIA_AUDIT_TTL_DAYS); 0 keeps them forever.')
@minValue(0)
param auditTtlDays int = 365

var partitionKey = {
  paths: [
    '/tenantId'
  ]
  kind: 'Hash'
  version: 2
}

// Keyset listings ORDER BY c.<key>, c.id both ways: composite indexes over (key, /id).
var instancesIndexing = {
  indexingMode: 'consistent'
  automatic: true
  includedPaths: [
    {
      path: '/*'
    }
  ]
  excludedPaths: [
    {
      path: '/"_etag"/?'
    }
  ]
  compositeIndexes: [
    [
      {
        path: '/createdKey'
        order: 'ascending'
      }
      {
        path: '/id'
        order: 'ascending'
      }
    ]
    [
      {
        path: '/createdKey'
        order: 'descending'
      }
      {
        path: '/id'
        order: 'descending'
      }
    ]
  ]
}

var auditIndexing = {
  indexingMode: 'consistent'
  automatic: true
  includedPaths: [
    {
      path: '/*'
    }
  ]
  excludedPaths: [
    {
      path: '/"_etag"/?'
    }
  ]
  compositeIndexes: [
    [
      {
        path: '/timeKey'
        order: 'ascending'
      }
      {
        path: '/id'
        order: 'ascending'
      }
    ]
    [
      {
        path: '/timeKey'
        order: 'descending'
      }
      {
        path: '/id'
        order: 'descending'
      }
    ]
  ]
}

resource account 'Microsoft.DocumentDB/databaseAccounts@2024-05-15' = {
  name: accountName
  location: location
  tags: tags
  kind: 'GlobalDocumentDB'
  properties: {
    databaseAccountOfferType: 'Standard'
    locations: [
      {
        locationName: location
        failoverPriority: 0
        isZoneRedundant: false
      }
    ]
    consistencyPolicy: {
      defaultConsistencyLevel: 'Session'
    }
    capabilities: [
      {
        name: 'EnableServerless'
      }
    ]
    // Entra tokens only: no account key exists for anyone to leak or use.
    disableLocalAuth: true
    // Keys cannot change databases or containers either: only ARM (this template) can.
    disableKeyBasedMetadataWriteAccess: true
    minimalTlsVersion: 'Tls12'
    // checkov:skip=CKV_AZURE_99: a Flex Consumption app without VNet integration has no fixed outbound address to allow; access needs an Entra token with a data-plane role
    // checkov:skip=CKV_AZURE_101: as CKV_AZURE_99: no fixed outbound address to allow without VNet integration; local (key) auth is disabled
    publicNetworkAccess: 'Enabled'
    // checkov:skip=CKV_AZURE_100: Microsoft-managed keys; a customer-managed key needs a Key Vault key and an identity per account (add keyVaultKeyUri where policy asks for it)
    backupPolicy: {
      type: 'Continuous'
      continuousModeProperties: {
        tier: 'Continuous7Days'
      }
    }
  }
}

resource database 'Microsoft.DocumentDB/databaseAccounts/sqlDatabases@2024-05-15' = {
  parent: account
  name: databaseName
  properties: {
    resource: {
      id: databaseName
    }
  }
}

resource agentInstances 'Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers@2024-05-15' = {
  parent: database
  name: 'agentInstances'
  properties: {
    resource: {
      id: 'agentInstances'
      partitionKey: partitionKey
      indexingPolicy: instancesIndexing
      // One live instance per (company, agent type); unique keys can only be set at creation.
      uniqueKeyPolicy: {
        uniqueKeys: [
          {
            paths: [
              '/liveKey'
            ]
          }
        ]
      }
    }
  }
}

resource auditLogs 'Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers@2024-05-15' = {
  parent: database
  name: 'auditLogs'
  properties: {
    resource: {
      id: 'auditLogs'
      partitionKey: partitionKey
      indexingPolicy: auditIndexing
      defaultTtl: auditTtlDays == 0 ? -1 : auditTtlDays * 86400
    }
  }
}

resource conversations 'Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers@2024-05-15' = {
  parent: database
  name: 'conversations'
  properties: {
    resource: {
      id: 'conversations'
      partitionKey: partitionKey
    }
  }
}

resource refreshJobs 'Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers@2024-05-15' = {
  parent: database
  name: 'refreshJobs'
  properties: {
    resource: {
      id: 'refreshJobs'
      partitionKey: partitionKey
    }
  }
}

resource usage 'Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers@2024-05-15' = {
  parent: database
  name: 'usage'
  properties: {
    resource: {
      id: 'usage'
      partitionKey: partitionKey
    }
  }
}

// Cosmos DB Built-in Data Contributor: read and write items, scoped to SOPHIA's database only
// (not the account: other databases in it stay out of reach). A data-plane (SQL) role, not ARM.
var builtInDataContributor = '00000000-0000-0000-0000-000000000002'

resource dataContributor 'Microsoft.DocumentDB/databaseAccounts/sqlRoleAssignments@2024-05-15' = {
  parent: account
  name: guid(account.id, sophiaPrincipalId, builtInDataContributor)
  properties: {
    principalId: sophiaPrincipalId
    roleDefinitionId: '${account.id}/sqlRoleDefinitions/${builtInDataContributor}'
    scope: '${account.id}/dbs/${databaseName}'
  }
  dependsOn: [
    database
  ]
}

output endpoint string = account.properties.documentEndpoint
output accountName string = account.name
output databaseName string = database.name
